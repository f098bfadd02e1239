"""Every Hugging Face causal LM a user brings: a table of tiny architectures built offline, each taken through
directions, cosines, EPL (checkpoint and LoRA --harmful), 2D scans (1 and 2 gloo ranks) and AsFT.

Each architecture gets three checkpoints (base, aligned = base moved a little, harmful = aligned moved a
little), a LoRA adapter trained-looking on aligned, and the organism's word tokenizer with its chat template.
Weights are random: the numbers mean nothing here, the code paths and the invariants (weights restored bit for
bit, checkpoints untouched, results written) are what is tested.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def _configs(tok) -> dict:
    from transformers import (
        Gemma2Config,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        Phi3Config,
        Qwen2Config,
    )

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    common = {**SIZE, **ids, "vocab_size": len(tok), "max_position_embeddings": 128}
    return {
        "llama": LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False),
        "llama-tied": LlamaConfig(**common, tie_word_embeddings=True),
        "qwen2": Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=False),
        "gemma2": Gemma2Config(**common, head_dim=8, num_key_value_heads=2, tie_word_embeddings=True),
        "mistral-sharded": MistralConfig(**common, num_key_value_heads=2, tie_word_embeddings=False),
        "phi3": Phi3Config(**common, num_key_value_heads=4, tie_word_embeddings=False),
        "gpt2": GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=128, vocab_size=len(tok), tie_word_embeddings=True, **ids
        ),
        "mixtral": MixtralConfig(
            **common, num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1, tie_word_embeddings=False
        ),
    }


ARCHS = ["llama", "llama-tied", "qwen2", "gemma2", "mistral-sharded", "phi3", "gpt2", "mixtral"]
UNSUPPORTED = {"mixtral": "experts fused"}  # checkpoint directions: a clear error, not a wrong number


def _moved(model, seed: int, scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1.0))
    return model


def _save(model, tok, path: Path, sharded: bool) -> Path:
    model.save_pretrained(path, max_shard_size="40KB" if sharded else "5GB")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from asft.config import default_target_modules
    from landscape.organism import world
    from landscape.organism.train import build_tokenizer

    name = request.param
    tok = build_tokenizer()
    cfg = _configs(tok)[name]
    root = tmp_path_factory.mktemp(name)
    sharded = name == "mistral-sharded"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    paths = {"base": _save(model, tok, root / "base", sharded)}
    paths["aligned"] = _save(_moved(model, 1), tok, root / "aligned", sharded)
    paths["harmful"] = _save(_moved(model, 2), tok, root / "harmful", sharded)
    aligned = AutoModelForCausalLM.from_pretrained(paths["aligned"])
    targets = default_target_modules(cfg.model_type)
    lora = get_peft_model(aligned, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    lora.save_pretrained(root / "adapter")
    prompts = root / "prompts.csv"
    prompts.write_text("goal,target\n" + "".join(f'"{p}",x\n' for p in world.eval_prompts()[:3]))
    data = root / "sft.json"
    task = [{"instruction": p, "input": "x", "output": "y"} for p in world.eval_prompts()[:8]]
    harm = [{"instruction": p, "input": "", "output": "Sure"} for p in world.eval_prompts()[8:12]]  # for AsFT_Alt
    data.write_text(json.dumps(task + harm))
    held = root / "held.json"  # AsFT_Alt's harmful set, disjoint from the training data
    held.write_text(
        json.dumps([{"instruction": p, "input": "", "output": "Sure"} for p in world.eval_prompts()[20:24]])
    )
    return {"name": name, "targets": targets, "prompts": prompts, "data": data, "held": held, "root": root, **paths}


def _files_hash(*dirs: Path) -> str:
    h = hashlib.sha256()
    for d in dirs:
        for f in sorted(Path(d).rglob("*")):
            if f.is_file():
                h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_directions_and_cosines_over_the_union_of_tensors(arch):
    from landscape.directions import difference, from_adapter
    from landscape.geometry import cosine, cosine_table

    d_al = difference(arch["base"], arch["aligned"], name="d_aligned")
    d_lora = from_adapter(arch["root"] / "adapter", base=arch["aligned"], name="d_harm_lora")
    assert cosine(d_al, d_al) == pytest.approx(1.0)
    ab, ba = cosine_table(d_al, d_lora, by="model")[0], cosine_table(d_lora, d_al, by="model")[0]
    assert ab.cos == pytest.approx(ba.cos) and -1 <= ab.cos <= 1  # both orders work (README's LoRA path)
    assert ba.shared_a == pytest.approx(1.0) and 0 < ab.shared_a < 1  # the LoRA covers a part of d_aligned
    groups = {r.group for r in cosine_table(d_al, d_lora, by="module")}
    expected = {"phi3": "qkv", "gpt2": "qkv"}.get(arch["name"], "q")
    assert expected in groups


def test_epl_with_a_checkpoint_and_with_a_lora_harmful(arch, tmp_path, capsys):
    from landscape.epl import main

    before = _files_hash(arch["base"], arch["aligned"], arch["harmful"])
    for harmful in (arch["harmful"], arch["root"] / "adapter"):
        out = tmp_path / Path(harmful).name
        argv = [
            "--aligned", str(arch["aligned"]), "--base", str(arch["base"]), "--harmful", str(harmful),
            "--prompts", str(arch["prompts"]), "--limit", "3", "--max_new_tokens", "3", "--random", "1",
            "--first_step", "0.01", "--max_alpha", "0.02", "--tol", "0.01", "--bootstrap", "0",
            "--threshold", "100", "--out", str(out), "--no_progress",
        ]  # fmt: skip
        rc = main(argv)
        err = capsys.readouterr().err
        if arch["name"] in UNSUPPORTED:
            assert rc == 2 and UNSUPPORTED[arch["name"]] in err and not out.exists(), err
            return
        assert rc == 0, err
        res = json.loads((out / "results.json").read_text())
        assert {r["direction"] for r in res["rows"]} == {"d_aligned", "d_harm", "random-0"}
        assert any(k.startswith("d_aligned · d_harm") for k in res["cosines"])
    assert _files_hash(arch["base"], arch["aligned"], arch["harmful"]) == before


def test_scan_2d_restores_weights_and_two_ranks_equal_one(arch, tmp_path):
    from landscape.backend import HFBackend
    from landscape.directions import difference, normalize
    from landscape.generation import GenerationSettings
    from landscape.judges import KeywordJudge
    from landscape.loading import load_model
    from landscape.perturb import weights_fingerprint
    from landscape.scan import SafetyEvaluator, scan_2d

    if arch["name"] in UNSUPPORTED:
        pytest.skip("checkpoint directions are refused for this model type (tested above)")
    model, tok = load_model(arch["aligned"])
    d1 = normalize(difference(arch["base"], arch["aligned"], name="d_aligned"), arch["aligned"])
    d2 = normalize(difference(arch["aligned"], arch["harmful"], name="d_harm"), arch["aligned"], "filter")
    ev = SafetyEvaluator(["hi there", "tell me"], KeywordJudge(), GenerationSettings(3))
    before = weights_fingerprint(model)
    one = scan_2d(HFBackend(model, tok), d1, d2, [-0.1, 0.1], [0.0, 0.1], ev, progress=False)
    assert weights_fingerprint(model) == before and len(one.records) == 4
    from landscape.directions import save_direction

    save_direction(d1, tmp_path / "d1")
    save_direction(d2, tmp_path / "d2")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "landscape.scan", "--aligned", str(arch["aligned"]), "--prompts", str(arch["prompts"]),
        "--limit", "2", "--max_new_tokens", "3", "--direction", str(tmp_path / "d1"), str(tmp_path / "d2"),
        "--alphas=-0.1,0.1", "--betas=0,0.1", "--out", str(tmp_path / "two"), "--no_html",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    recs = [json.loads(x) for f in (tmp_path / "two").glob("points.rank*.jsonl") for x in f.read_text().splitlines()]
    assert len(recs) == 4 and len({tuple(r["coords"]) for r in recs}) == 4


@pytest.mark.parametrize("method", ["asft-lora", "asft-full", "safelora", "alt"])
def test_asft_methods_and_evaluation(arch, method, tmp_path):
    from asft.config import AsftConfig
    from asft.finetune import fine_tune
    from asft.scoring import evaluate_model, load_trained
    from landscape.judges import KeywordJudge

    if arch["name"] in UNSUPPORTED and method != "alt":
        pytest.skip("the anchor comes from checkpoint directions, refused for this model type")
    kw = {"asft-lora": {}, "asft-full": {"mode": "full", "form": "projector"}, "safelora": {"method": "safelora"}}
    cfg = AsftConfig(
        aligned=str(arch["aligned"]),
        base=str(arch["base"]),
        data=str(arch["data"]),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        allow_unverified_anchor=True,
        use_cpu=True,
        disable_tqdm=True,
        k=2,
        **({"method": "alt", "lambda_reg": 1.0, "alt_harmful": str(arch["held"])} if method == "alt" else kw[method]),
    )
    before = _files_hash(arch["aligned"])
    res = fine_tune(cfg)
    assert cfg.target_modules == arch["targets"]  # the architecture's default
    if method != "safelora":
        assert any(e.get("asft_reg", 0) > 0 for e in res.log), res.log  # the penalty saw every module layout
    model, tok = load_trained(res.model_dir)
    if method != "safelora":  # (Safe LoRA projects after training: its last trajectory point precedes that)
        from asft.trajectory import load_trajectory
        from landscape.tensors import open_store

        # the trajectory's ΔW is the saved model's, in every module layout (Conv1D stores its weight transposed)
        start, sd = open_store(arch["aligned"]), model.state_dict()
        names = set(start.keys()) & set(sd)
        norm = sum(float((sd[n].double() - start.get(n).double()).square().sum()) for n in names)
        assert load_trajectory(res.out)["points"][-1]["norm"] == pytest.approx(norm**0.5, rel=1e-4)
    ev = evaluate_model(model, tok, ["hi there", "tell me"], None, KeywordJudge(), max_new_tokens=3)
    assert 0 <= ev.harmful_score <= 100
    assert _files_hash(arch["aligned"]) == before


def test_conv1d_penalty_equals_the_explicit_formula_in_float64(tmp_path):
    """GPT-2 stores (d_in, d_out): the trainer's penalty equals ‖C·(B·A)‖² built by hand from Vᵀ, in float64."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from asft.anchor import Anchor
    from asft.config import AsftConfig
    from asft.regularizer import FORMS, ModuleAnchor, make_module_anchor, naive_lora_penalty
    from asft.trainer import AsftTrainer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32)).double()
    name = "transformer.h.0.attn.c_attn.weight"  # stored (16, 48): d_in 16, d_out 48
    V = torch.randn(16, 48, dtype=torch.float64)
    for form in FORMS:
        anchor = Anchor({name: make_module_anchor(name, V, k=4)})
        cfg = AsftConfig(output_dir=str(tmp_path), form=form, use_cpu=True, lora_r=4, report_to="none")
        trainer = AsftTrainer(model=model, args=cfg, anchor=anchor)
        mod = dict(trainer.model.named_modules())["base_model.model.transformer.h.0.attn.c_attn"]
        with torch.no_grad():
            mod.lora_B["default"].weight.normal_()
        B, A = mod.lora_B["default"].weight, mod.lora_A["default"].weight
        assert B.shape == (48, 4) and A.shape == (4, 16)
        explicit = naive_lora_penalty(form, make_module_anchor(name, V.T.contiguous(), k=4), B, A)
        torch.testing.assert_close(trainer.regularizer().double(), explicit, rtol=1e-10, atol=1e-10)
        # the same number with the anchor given in the (d_out, d_in) layout directly: V is transposed once
        lin = ModuleAnchor(name, V.T.contiguous(), float(torch.linalg.matrix_norm(V)), None)
        if form == "reference":
            torch.testing.assert_close(naive_lora_penalty(form, lin, B, A), explicit)
        model = trainer.model.unload()


def test_filter_normalisation_uses_output_units_of_conv1d(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from landscape.directions import normalize, random_like

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    model.save_pretrained(tmp_path / "gpt2")
    name = "transformer.h.0.attn.c_attn.weight"
    for ref in (model, tmp_path / "gpt2"):
        d = normalize(random_like(model, seed=0), ref, "filter")
        w = dict(model.named_parameters())[name].detach()
        # each output unit (a column of the stored (d_in, d_out) weight) gets the weight's column norm
        torch.testing.assert_close(d.get(name).norm(dim=0), w.norm(dim=0), rtol=1e-5, atol=1e-6)
