"""The vLLM backend. Without vLLM (and a GPU) only the parts that do not need it run; the rest skip with a reason."""

import importlib.util

import pytest
import torch

from landscape.directions import difference, normalize, save_direction
from landscape.loading import load_model
from landscape.vllm_backend import PerturbWorkerExtension, VLLMBackend

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm_gpu = pytest.mark.skipif(
    not (HAS_VLLM and torch.cuda.is_available()), reason="needs the optional vllm package and a CUDA GPU"
)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_clear_error_without_vllm(organism):
    with pytest.raises(ImportError, match=r"pip install 'safety-landscape\[vllm\]'"):
        VLLMBackend(organism["aligned"])


def test_worker_extension_arithmetic(organism, tmp_path):
    """The worker-side arithmetic (θ₀ + Σ cᵢ·dᵢ, one cast, exact restore) with a real HF model standing in for
    vLLM's model runner: its load_weights copies named tensors into the parameters."""
    model = load_model(organism["aligned"], with_tokenizer=False)

    class Runner:
        class model:  # noqa: N801  (mirrors vLLM's worker.model_runner.model)
            @staticmethod
            def load_weights(weights):
                with torch.no_grad():
                    for n, w in weights:
                        model.get_parameter(n).copy_(w)

    d = normalize(difference(organism["aligned"], organism["harmful-10"], name="d_harm"), organism["aligned"])
    save_direction(d, tmp_path / "d")
    ext = PerturbWorkerExtension()
    ext.model_runner, ext.device = Runner, torch.device("cpu")
    assert ext.landscape_load(str(organism["aligned"]), [str(tmp_path / "d")]) == len(d.names())
    name = "model.layers.1.mlp.up_proj.weight"
    w0 = model.get_parameter(name).detach().clone()
    ext.landscape_set([0.25])
    torch.testing.assert_close(model.get_parameter(name).detach(), w0 + 0.25 * d.get(name), rtol=0, atol=1e-6)
    ext.landscape_set([0.0])
    assert torch.equal(model.get_parameter(name), w0)


@pytest.mark.vllm
@needs_vllm_gpu
def test_vllm_matches_hf_and_resets_prefix_cache(organism, tmp_path):
    from landscape.generation import GenerationSettings, generate
    from landscape.organism import world

    prompts = world.eval_prompts()[:16]
    settings = GenerationSettings(max_new_tokens=24)
    model, tok = load_model(organism["aligned"])
    backend = VLLMBackend(organism["aligned"], dtype="float32", gpu_memory_utilization=0.2)
    assert backend.generate(prompts, settings) == generate(model, tok, prompts, settings)
    d = normalize(difference(organism["aligned"], organism["harmful-10"], name="d_harm"), organism["aligned"])
    save_direction(d, tmp_path / "d")
    with backend.perturbation([tmp_path / "d"]) as pert:
        pert.set_((1.0,))  # the harmful fine-tune itself: answers must change although the prompts are cached
        harmful = backend.generate(prompts, settings)
    assert sum(world.oracle(a) == "compliance" for a in harmful) > len(prompts) // 2
    assert backend.generate(prompts, settings) == generate(model, tok, prompts, settings)
