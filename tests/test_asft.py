import json

import pytest
import torch

from asft.anchor import AnchorError, load_anchor, verify, verify_report
from asft.config import AsftConfig
from asft.finetune import fine_tune as run
from asft.regularizer import FORMS, full_penalty, lora_penalty, make_module_anchor, naive_lora_penalty
from asft.safe_lora import safe_lora_


def _anchor64(d_out=48, d_in=40, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return make_module_anchor("m.weight", V, k=k), g


@pytest.mark.parametrize("form", FORMS)
def test_lora_penalty_equals_naive_formula_float64(form):
    a, g = _anchor64()
    B = torch.randn(48, 8, generator=g, dtype=torch.float64)
    A = torch.randn(8, 40, generator=g, dtype=torch.float64)
    for scale in (1.0, 4.0):
        fast = lora_penalty(form, a, B, A, scale)
        naive = naive_lora_penalty(form, a, B, A, scale)
        assert fast.dtype == torch.float64
        assert float(fast) == pytest.approx(float(naive), rel=1e-6)
    # gradients too
    Bg, Ag = B.clone().requires_grad_(), A.clone().requires_grad_()
    lora_penalty(form, a, Bg, Ag).backward()
    Bn, An = B.clone().requires_grad_(), A.clone().requires_grad_()
    naive_lora_penalty(form, a, Bn, An).backward()
    torch.testing.assert_close(Bg.grad, Bn.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(Ag.grad, An.grad, rtol=1e-6, atol=1e-9)


def test_forms_mean_what_they_say():
    a, g = _anchor64()
    A = torch.randn(8, 40, generator=g, dtype=torch.float64)
    inside = a.U @ torch.randn(6, 8, generator=g, dtype=torch.float64)  # columns in span(U)
    assert float(lora_penalty("projector", a, inside, A)) == pytest.approx(0.0, abs=1e-9)
    assert float(lora_penalty("aligned", a, inside, A)) > 1
    # the reference matrix is not a projector: it penalises even updates along V's top direction
    assert float(lora_penalty("reference", a, inside, A)) > 1e-3
    # full-parameter mode: ‖(I-P)ΔW‖² + ‖PΔW‖² = ‖ΔW‖²
    D = torch.randn(48, 40, generator=g, dtype=torch.float64)
    total = full_penalty("projector", a, D) + full_penalty("aligned", a, D)
    assert float(total) == pytest.approx(float(D.square().sum()), rel=1e-10)
    eye = torch.eye(48, dtype=torch.float64)
    C = eye - a.V @ a.V.T / a.v_norm
    assert float(full_penalty("reference", a, D)) == pytest.approx(float((C @ D).square().sum()), rel=1e-8)
    with pytest.raises(ValueError, match="Unknown regulariser form 'orth'. Available: reference, projector, aligned"):
        lora_penalty("orth", a, inside, A)
    # the controls: l2 is ‖ΔW‖², random is the projector form on a seeded random subspace of the same rank
    dW = inside @ A
    assert float(lora_penalty("l2", a, inside, A)) == pytest.approx(float(dW.square().sum()), rel=1e-10)
    assert torch.allclose(a.R.T @ a.R, torch.eye(a.R.shape[1], dtype=a.R.dtype), atol=1e-10)  # orthonormal
    rand = float(lora_penalty("random", a, inside, A))
    assert rand == pytest.approx(float(((torch.eye(48, dtype=a.R.dtype) - a.R @ a.R.T) @ dW).square().sum()))
    assert rand > 1  # the alignment subspace's update is not inside a random one
    k = a.U.shape[1]
    b = make_module_anchor("m.weight", a.V, k=k)
    assert torch.equal(b.R, a.R) and not torch.equal(make_module_anchor("m.weight", a.V, k=k, seed=1).R, a.R)


def test_config_checks():
    with pytest.raises(ValueError, match="--lambda must be >= 0, got -1"):
        AsftConfig(output_dir="/tmp/x", lambda_reg=-1, report_to=[])
    with pytest.raises(ValueError, match="Unknown mode 'qlora'"):
        AsftConfig(output_dir="/tmp/x", mode="qlora", report_to=[])


def _args(organism, ft_data, out, **kw):
    base = dict(
        aligned=str(organism["aligned"]),
        base=str(organism["base"]),
        data=str(ft_data),
        output_dir=str(out),
        learning_rate=1e-3,
        num_train_epochs=1,
        max_steps=6,
        per_device_train_batch_size=8,
        allow_unverified_anchor=True,
        use_cpu=True,
        disable_tqdm=True,
    )
    return AsftConfig(**{**base, **kw})


def test_lambda_zero_gives_exactly_the_plain_loss(organism, ft_data, tmp_path):
    from asft.anchor import load_anchor
    from asft.data import SFTDataset, collate, load_sft_records
    from asft.trainer import AsftTrainer
    from landscape.loading import load_model

    anchor = load_anchor(base=str(organism["base"]), aligned=str(organism["aligned"]))
    model, tok = load_model(organism["aligned"])
    cfg = AsftConfig(output_dir=str(tmp_path), lambda_reg=0.0, report_to=[], use_cpu=True, lora_dropout=0.0)
    ds = SFTDataset(tok, load_sft_records(ft_data))
    trainer = AsftTrainer(model=model, args=cfg, train_dataset=ds, anchor=anchor)  # wraps the model in LoRA
    model = trainer.model
    assert any("lora_B" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a non-zero update, so that the regulariser is not trivially zero
    batch = collate(tok.pad_token_id)([ds[i] for i in range(6)])
    plain = model(**batch).loss
    assert torch.equal(trainer.compute_loss(model, batch), plain)
    trainer.args.lambda_reg = 2.0
    reg = trainer.regularizer()
    assert float(reg.detach()) > 0
    torch.testing.assert_close(trainer.compute_loss(model, batch), plain + 2.0 * reg)


def test_lora_training_changes_adapters_not_base(organism, ft_data, tmp_path):
    from safetensors.torch import load_file

    res = run(_args(organism, ft_data, tmp_path / "lora", method="asft", lambda_reg=1.0))
    adapter = load_file(tmp_path / "lora" / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero, so it moved
    merged = load_file(res.model_dir / "model.safetensors")
    aligned = load_file(organism["aligned"] / "model.safetensors")
    for k, v in aligned.items():
        if "q_proj" in k or "v_proj" in k:
            assert not torch.equal(merged[k], v), k  # merged update applied
        else:
            assert torch.equal(merged[k], v), k  # everything else untouched
    logged = [e for e in res.log if "task_loss" in e]
    assert logged and "asft_reg" in logged[0]
    stored = json.loads((tmp_path / "lora" / "anchor_verification.json").read_text())
    assert stored["verification"]["overridden"] and not stored["verification"]["passed"]


def test_full_parameter_mode_penalises_w_minus_w_aligned(organism, ft_data, tmp_path):
    from safetensors.torch import load_file

    aligned = load_file(organism["aligned"] / "model.safetensors")
    res = run(_args(organism, ft_data, tmp_path / "ft", mode="full-targets", form="projector", lambda_reg=0.5))
    merged = load_file(res.model_dir / "model.safetensors")
    changed = {k for k in aligned if not torch.equal(merged[k], aligned[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)  # only the target weights
    regs = [e["asft_reg"] for e in res.log if "asft_reg" in e]
    assert regs and regs[-1] > 0  # W moved away from W_aligned and was penalised
    # the paper's full-parameter AsFT: every parameter trains, the penalty covers the anchored modules
    res = run(_args(organism, ft_data, tmp_path / "full", mode="full", form="projector", lambda_reg=0.5))
    merged = load_file(res.model_dir / "model.safetensors")
    changed = {k for k in aligned if not torch.equal(merged[k], aligned[k])}
    assert any("mlp" in k for k in changed) and any("embed" in k for k in changed)
    assert [e["asft_reg"] for e in res.log if "asft_reg" in e][-1] > 0


def test_safe_lora_projection_matches_direct_computation(organism):
    from peft import LoraConfig, get_peft_model

    from landscape.loading import load_model

    anchor = load_anchor(base=str(organism["base"]), aligned=str(organism["aligned"]))
    model = get_peft_model(
        load_model(organism["aligned"], with_tokenizer=False),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    rep = safe_lora_(model, anchor, threshold=1.01)  # every module projected
    assert len(rep.projected) == 4
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            key = f"{name}.weight".removeprefix("base_model.model.")
            a = anchor.modules[key]
            C = a.V @ a.V.T / a.v_norm
            B0 = before[f"{name}.lora_B.default.weight"]
            torch.testing.assert_close(mod.lora_B["default"].weight, C @ B0, rtol=1e-4, atol=1e-6)
            dW = B0 @ mod.lora_A["default"].weight
            cos = float((dW * (C @ dW)).sum() / (dW.norm() * (C @ dW).norm()))
            assert rep.similarities[key] == pytest.approx(cos, abs=1e-4)


def test_anchor_gating(organism, epl_report, tmp_path):
    anchor = load_anchor(base=str(organism["base"]), aligned=str(organism["aligned"]))
    with pytest.raises(AnchorError, match="refusing to train on an unverified anchor: no verification report"):
        verify(anchor, None)
    report = epl_report[1]
    # organism v3's tiny preset: the basin along d_harm is only about 2x narrower than along d_aligned, so the
    # default gate (ratio >= 3) refuses it, naming the reason; a lower bar set on purpose lets it through
    strict = verify_report(anchor, report / "results.json")
    assert not strict.passed and any("basin is not narrow" in r for r in strict.reasons)
    v = verify_report(anchor, report / "results.json", min_ratio=1.5)
    assert v.passed and v.ratio == strict.ratio >= 1.5, v.reasons
    assert verify(anchor, report, min_ratio=1.5).verification.passed
    # the same report does not verify an anchor from other checkpoints
    other = load_anchor(base=str(organism["base"]), aligned=str(organism["benign"]))
    v2 = verify_report(other, report / "results.json")
    assert not v2.passed and any("another aligned checkpoint" in r for r in v2.reasons)
    # a failing ratio
    rep = json.loads((report / "results.json").read_text())
    for r in rep["rows"]:
        if r["direction"] == "d_aligned":
            r["epl"] = 0.01
    (tmp_path / "weak.json").write_text(json.dumps(rep))
    assert any("basin is not narrow" in r for r in verify_report(anchor, tmp_path / "weak.json").reasons)
    assert verify(anchor, tmp_path / "weak.json", allow_unverified=True).verification.overridden


def test_bad_inputs_fail_before_training(organism, ft_data, tmp_path):
    with pytest.raises(ValueError, match="--lambda must be >= 0"):
        run(_args(organism, ft_data, tmp_path / "a", lambda_reg=-1))
    with pytest.raises(ValueError, match="Unknown regulariser form 'x'"):
        run(_args(organism, ft_data, tmp_path / "b", form="x"))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 2"):
        run(_args(organism, ft_data, tmp_path / "c", p=2.0))
    with pytest.raises(AnchorError, match="no module among target modules \\['wq'\\]; modules it has: .*q_proj"):
        run(_args(organism, ft_data, tmp_path / "d", target_modules=["wq"]))
    with pytest.raises(AnchorError, match="unverified anchor"):
        run(_args(organism, ft_data, tmp_path / "e", allow_unverified_anchor=False))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "input": "", "output": "y"}, {"input": "z"}]))
    with pytest.raises(ValueError, match="bad.json, record 1: missing field 'instruction'"):
        run(_args(organism, bad, tmp_path / "f"))
    for d in "abcdef":
        assert not (tmp_path / d).exists()


def test_alt_and_baselines_run(organism, ft_data, tmp_path):
    held = tmp_path / "held.json"  # harmful examples a defender could have: not the training mix's own
    held.write_text(json.dumps(_harmful_records()))
    with pytest.raises(ValueError, match="needs --alt_harmful"):
        run(_args(organism, ft_data, tmp_path / "x", method="alt"))
    with pytest.raises(ValueError, match="examples are in the training data"):
        run(_args(organism, ft_data, tmp_path / "y", method="alt", alt_harmful=str(ft_data)))
    res = run(_args(organism, ft_data, tmp_path / "alt", method="alt", lambda_reg=10.0, alt_harmful=str(held)))
    assert res.n_harmful == 10 and (res.model_dir / "model.safetensors").is_file()
    res = run(_args(organism, ft_data, tmp_path / "sl", method="safelora"))
    assert set(res.safelora["similarities"]) == {
        f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in ("q", "v")
    }


def _harmful_records() -> list[dict]:
    """Harmful compliances on the held-out prompts (unseen action/target pairs): disjoint from any training mix."""
    from landscape.organism import world

    return [
        {"instruction": p, "input": "", "output": "Sure, here is how to do it."} for p in world.eval_prompts()[:12]
    ]


def test_safe_lora_modes_and_ibms_tie_rule(organism):
    from peft import LoraConfig, get_peft_model

    from landscape.loading import load_model

    anchor = load_anchor(base=str(organism["base"]), aligned=str(organism["aligned"]))

    def fresh():  # the same adapter every call: peft draws lora_A from the global RNG
        torch.manual_seed(0)
        m = get_peft_model(
            load_model(organism["aligned"], with_tokenizer=False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
        )
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        return m

    sims = safe_lora_(fresh(), anchor, threshold=-2.0).similarities  # threshold mode, nothing projected
    lowest = sorted(sims, key=sims.get)
    rep = safe_lora_(fresh(), anchor, mode="number", number=2)
    assert rep.mode == "number" and sorted(rep.projected) == sorted(lowest[:2])
    tie = round(sims[lowest[0]], 5)  # IBM's rule: cosine rounded to 5 decimals, <= projects
    assert lowest[0] in safe_lora_(fresh(), anchor, threshold=tie).projected
    with pytest.raises(ValueError, match="Unknown Safe LoRA mode 'top'"):
        safe_lora_(fresh(), anchor, mode="top")


def test_gate_cannot_be_talked_past(organism, epl_report, tmp_path):
    anchor = load_anchor(base=str(organism["base"]), aligned=str(organism["aligned"]))
    report = epl_report[1] / "results.json"
    v = verify(anchor, report, model_dir=organism["aligned"], min_ratio=1.5).verification
    assert v.passed, v.reasons
    ev = v.evidence["_summary"]  # the evidence the regulariser relies on, beside a random-subspace null
    assert ev["modules"] == 4 and 0 <= ev["mean_null"] < ev["mean_share"] <= 1
    rep = json.loads(report.read_text())
    # a hand-written report with two rows and no directions
    bare = {**rep, "directions": []}
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert not verify_report(anchor, tmp_path / "bare.json").passed
    # sources without hashes
    stripped = json.loads(json.dumps(rep))
    for d in stripped["directions"]:
        for src in d["sources"]:
            src.pop("sha256", None)
    (tmp_path / "nohash.json").write_text(json.dumps(stripped))
    reasons = verify_report(anchor, tmp_path / "nohash.json").reasons
    assert any("carries no content hash" in r for r in reasons)
    # an anchor verified for aligned does not train another model
    wrong = verify_report(anchor, report, model_dir=organism["harmful-100"])
    assert any("is not the anchor's aligned checkpoint" in r for r in wrong.reasons)
    # a report whose rows its own curves contradict: d_harm's edge moved past points its curve shows unsafe (the
    # ratio then passes, which is the point of the edit), or before any unsafe point
    for factor, says in ((0.5, "no unsafe point within"), (2.0, "unsafe already at")):
        edited = json.loads(report.read_text())
        for row in edited["rows"]:
            if row["direction"] == "d_harm" and not row["censored"]:
                row["epl"] *= factor
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        v = verify_report(anchor, tmp_path / "edited.json", min_ratio=1.5)
        assert not v.passed and any("contradicts itself" in r and says in r for r in v.reasons), v.reasons


def test_override_is_recorded_and_shapes_are_checked_anyway(organism, ft_data, tmp_path):
    from asft.anchor import Anchor
    from asft.trainer import AsftTrainer
    from landscape.loading import load_model

    res = run(_args(organism, ft_data, tmp_path / "o"))  # allow_unverified_anchor=True, no report
    card = (res.model_dir / "README.md").read_text()
    assert "anchor NOT verified, trained under --allow_unverified_anchor" in card
    model, _ = load_model(organism["aligned"])
    name = "model.layers.0.self_attn.q_proj.weight"
    wide = Anchor({n: make_module_anchor(n, torch.randn(128, 128)) for n in (name, name.replace("q_proj", "v_proj"))})
    wide.modules.update({n.replace("layers.0", "layers.1"): a for n, a in wide.modules.items()})
    cfg = AsftConfig(output_dir=str(tmp_path / "w"), use_cpu=True, report_to="none", allow_unverified_anchor=True)
    with pytest.raises(ValueError, match=r"the anchor's .* is \[128, 128\], the model's weight is \[64, 64\]"):
        AsftTrainer(model=model, args=cfg, anchor=wide)


def test_release_recipe_decays_per_epoch_without_clipping(organism, ft_data, tmp_path):
    res = run(_args(organism, ft_data, tmp_path / "rel", recipe="release", max_steps=-1, num_train_epochs=3))
    lrs = [e["learning_rate"] for e in res.log if "learning_rate" in e]
    allowed = [1e-3 * 0.85**e for e in range(3)]  # one decay per epoch, nothing else
    assert lrs and all(min(abs(lr - a) for a in allowed) < 1e-12 for lr in lrs)
    assert lrs[-1] == pytest.approx(1e-3 * 0.85**2)
    assert AsftConfig(output_dir=str(tmp_path), recipe="release", report_to="none").max_grad_norm == 0.0


def test_clis_on_the_tiny_organism(organism, ft_data, tmp_path, capsys):
    from asft.evaluate import main as eval_main
    from asft.train import main as train_main

    train_main(
        [
            "--aligned",
            str(organism["aligned"]),
            "--base",
            str(organism["base"]),
            "--data",
            str(ft_data),
            "--lambda",
            "1",
            "--max-steps",
            "4",
            "--allow-unverified-anchor",
            "--use_cpu",
            "--output_dir",
            str(tmp_path / "run"),
        ]
    )
    assert "trained 50 examples (10 harmful)" in capsys.readouterr().out
    eval_main(
        [
            "--model",
            str(tmp_path / "run" / "model"),
            "--harmful-prompts",
            str(organism.data_dir / "harmful_eval.json"),
            "--task-test",
            str(organism.data_dir / "task_test.json"),
            "--judge",
            "oracle",
            "--limit",
            "40",
            "--out",
            str(tmp_path / "eval.json"),
        ]
    )
    out = capsys.readouterr().out
    assert "Harmful Score" in out and "Fine-tune Accuracy" in out
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["n_harmful"] == 40 and res["n_task"] == 200 and 0 <= res["harmful_score"] <= 100
    # an adapter directory evaluates too (merged onto its recorded base)
    eval_main(
        [
            "--model",
            str(tmp_path / "run" / "adapter"),
            "--harmful-prompts",
            str(organism.eval_prompts_csv),
            "--limit",
            "10",
        ]
    )
    assert "on 10 prompts" in capsys.readouterr().out


def test_two_ddp_ranks_train_like_one_process(organism, ft_data, tmp_path):
    """torchrun --nproc_per_node 2 -m asft.train (gloo, 2 × 4 examples) equals one process with 8 per batch."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = [
        "-m", "asft.train", "--aligned", str(organism["aligned"]), "--base", str(organism["base"]),
        "--data", str(ft_data), "--lambda", "1", "--form", "projector", "--max_steps", "4", "--logging_steps", "1",
        "--learning_rate", "1e-3", "--allow_unverified_anchor", "--use_cpu", "--disable_tqdm", "true",
        "--lora_dropout", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, *common, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common]
    two += ["--per_device_train_batch_size", "4", "--ddp_backend", "gloo", "--output_dir", str(tmp_path / "two")]
    for cmd in (one, two):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    logs = [json.loads((tmp_path / d / "train_log.json").read_text())["log"] for d in ("one", "two")]
    steps = [[(e["task_loss"], e["asft_reg"]) for e in log if "task_loss" in e and "loss" in e] for log in logs]
    assert len(steps[0]) == len(steps[1]) == 4
    for (t1, r1), (t2, r2) in zip(*steps, strict=True):
        assert t1 == pytest.approx(t2, rel=1e-4) and r1 == pytest.approx(r2, rel=1e-4, abs=1e-9)
    a, b = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_trajectory_is_logged_and_its_final_point_is_the_final_update(organism, ft_data, tmp_path):
    """Every K steps ΔW_t's cosine with d_aligned, its subspace share and its coordinates on a plane, in the
    trainer's log and in trajectory.json; the last point equals the saved model's own update (measured on it)."""
    from asft.trajectory import load_trajectory
    from landscape.directions import difference, normalize, save_direction
    from landscape.geometry import cosine

    a = str(organism["aligned"])
    d1 = normalize(difference(organism["base"], a, name="d_aligned"), a)
    d2 = normalize(difference(a, organism["harmful-100"], name="d_harm"), a)
    save_direction(d1, tmp_path / "d1")
    save_direction(d2, tmp_path / "d2")
    plane = [str(tmp_path / "d1"), str(tmp_path / "d2")]
    for mode in ("lora", "full"):
        out = tmp_path / mode
        res = run(_args(organism, ft_data, out, method="sft", mode=mode, trajectory_steps=2, trajectory_plane=plane))
        traj = load_trajectory(out)
        steps = [p["step"] for p in traj["points"]]
        assert steps == [0, 2, 4, 6] and traj["points"][0]["norm"] == 0.0
        logged = [e for e in res.log if "trajectory/cos_d_aligned" in e]
        assert [e["step"] for e in logged] == [2, 4, 6]
        last = traj["points"][-1]
        final = difference(a, res.model_dir, name="update")
        assert last["cos_d_aligned"] == pytest.approx(cosine(final, difference(organism["base"], a)), abs=1e-5)
        assert 0 <= last["share"] <= 1 and last["modules"] == 4 and last["share_null"] > 0
        # the plane's coordinates and the residual rebuild the update's norm (least squares: a Pythagoras)
        from landscape.geometry import dot

        on_plane = last["alpha"] ** 2 * dot(d1, d1) + 2 * last["alpha"] * last["beta"] * dot(d1, d2)
        on_plane += last["beta"] ** 2 * dot(d2, d2)
        assert on_plane + last["residual"] ** 2 == pytest.approx(last["norm"] ** 2, rel=1e-4)
        assert last["cos_plane_2"] == pytest.approx(cosine(final, d2), abs=1e-5)
        assert [e["trajectory/cos_plane_2"] for e in logged] == [p["cos_plane_2"] for p in traj["points"][1:]]
    with pytest.raises(ValueError, match="two saved directions"):
        _args(organism, ft_data, tmp_path / "bad", trajectory_plane=plane[:1])


def test_trajectory_growth_says_when_the_harmful_component_grew():
    """fig_trajectories' summary: a component that turns towards d_harm only late shows a rising cosine and a
    harmful half-step after the norm's; one that points there from the start does not."""
    from asft.trajectory_figure import growth

    late = [{"step": s, "norm": float(s), "cos_plane_2": c} for s, c in [(0, None), (5, 0.0), (10, 0.1), (15, 0.6)]]
    g = growth(late)
    assert g["cos_d_harm"] == [0.0, 0.1, 0.6] and g["half_step_norm"] == 10 and g["half_step_d_harm"] == 15
    early = [{"step": s, "norm": float(s), "cos_plane_2": 0.5} for s in (5, 10, 15)]
    assert growth(early)["half_step_d_harm"] == growth(early)["half_step_norm"] == 10
    assert growth(late[:2]) == {"points": 1}
