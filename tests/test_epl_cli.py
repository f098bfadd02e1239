import json

import pytest

from landscape.epl import EplArgs, main, run
from landscape.judges import available_judges
from landscape.results import POINTS_FILE, RunMismatchError


def test_cli_on_the_organism_defaults(organism_cache, tmp_path, capsys):
    out = tmp_path / "epl"
    assert main(["--preset", "tiny", "--cache-dir", str(organism_cache), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("d_aligned", "d_harm", "random-0", "random-1", "cos(d_aligned · d_harm)"):
        assert name in text
    res = json.loads((out / "results.json").read_text())
    rows = {(r["direction"], r["side"]): r for r in res["rows"]}
    harm = rows[("d_harm", 1)]
    assert not harm["censored"] and harm["epl"] > 0 and harm["ci"][0] <= harm["epl"] <= harm["ci"][1]
    # The claim the table exists for, against its own controls rather than a draw-specific number: d_harm's
    # edge is the nearest one, and the random controls show no edge within --max-alpha (0.2052 on an AVX-512
    # CPU's unpinned tiny draw, under 0.2 on an AVX2 one).
    others = [r for key, r in rows.items() if key != ("d_harm", 1)]
    assert all(r["epl"] > harm["epl"] for r in others)
    assert all(r["censored"] for (name, _), r in rows.items() if name.startswith("random-"))
    assert res["judge_calls"]["hits"] > 0 and res["extra_curves"]["oracle"]
    assert (out / "epl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    n_points = len((out / POINTS_FILE).read_text().splitlines())
    main(["--preset", "tiny", "--cache-dir", str(organism_cache), "--out", str(out)])
    assert "0 new evaluations" in capsys.readouterr().out  # resumed: nothing recomputed
    assert len((out / POINTS_FILE).read_text().splitlines()) == n_points


def test_cli_with_explicit_paths(organism, tmp_path, capsys):
    out = tmp_path / "explicit"
    main(
        [
            "--aligned",
            str(organism["aligned"]),
            "--base",
            str(organism["base"]),
            "--harmful",
            str(organism["harmful-10"]),
            "--prompts",
            str(organism.eval_prompts_csv),
            "--limit",
            "40",
            "--judge",
            "oracle",
            "--random",
            "0",
            "--tol",
            "0.01",
            "--max-alpha",
            "0.3",
            "--out",
            str(out),
        ]
    )
    res = json.loads((out / "results.json").read_text())
    assert {r["direction"] for r in res["rows"]} == {"d_aligned", "d_harm"}
    assert res["meta"]["args"]["judge"] == "oracle" and set(res["extra_curves"]) == {"coherent"}  # no oracle twice


def test_bad_inputs_fail_before_any_result(organism, organism_cache, tmp_path):
    base = dict(preset="tiny", cache_dir=str(organism_cache), progress=False)
    with pytest.raises(ValueError, match=r"threshold must be an ASR in \[0, 100\] %, got 150"):
        run(EplArgs(threshold=150, out=str(tmp_path / "a"), **base))
    with pytest.raises(ValueError, match=f"Unknown judge 'gpt4'. Available: {', '.join(available_judges())}"):
        run(EplArgs(judge="gpt4", out=str(tmp_path / "b"), **base))
    with pytest.raises(ValueError, match="judge 'guard' needs --judge_path"):
        EplArgs(judge="guard", aligned=str(organism["aligned"]), prompts=str(organism.eval_prompts_csv))
    with pytest.raises(ValueError, match="Unknown backend 'tgi'. Available: hf, vllm"):
        run(EplArgs(backend="tgi", out=str(tmp_path / "g"), **base))
    with pytest.raises(ValueError, match="Unknown normalization 'unit'"):
        run(EplArgs(normalization="unit", out=str(tmp_path / "d"), **base))
    with pytest.raises(ValueError, match="not a model directory"):
        run(EplArgs(judge="classifier", judge_path=str(tmp_path), out=str(tmp_path / "e"), **base))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt: no prompts"):
        run(EplArgs(aligned=str(organism["aligned"]), prompts=str(empty), out=str(tmp_path / "f"), progress=False))
    for d in "abcdef":
        assert not (tmp_path / d / POINTS_FILE).exists()


def test_results_from_a_different_run_are_refused(organism_cache, tmp_path):
    out = tmp_path / "r"
    kw = dict(preset="tiny", cache_dir=str(organism_cache), progress=False, out=str(out), random=0)
    run(EplArgs(limit=20, tol=0.02, **kw))
    before = (out / POINTS_FILE).read_bytes()
    with pytest.raises(RunMismatchError, match="different run"):
        run(EplArgs(limit=30, tol=0.02, **kw))
    assert (out / POINTS_FILE).read_bytes() == before


@pytest.mark.parametrize("judge", ["guard", "classifier"])
def test_the_organisms_trained_judges_run_the_epl_end_to_end(organism, organism_cache, tmp_path, judge):
    rep = run(
        EplArgs(
            preset="tiny",
            cache_dir=str(organism_cache),
            out=str(tmp_path / judge),
            random=0,
            judge=judge,
            bootstrap=0,
            progress=False,
        )
    )
    assert rep.meta["judge"].startswith(f"{judge}:{organism.judges[judge]}")
    assert rep.center_asr == 0.0
    # a model judge flags coherent harmful answers only, not babble: its d_harm edge lies at or beyond the
    # keyword judge's (which calls babble unsafe), and the oracle curve it is trained on agrees
    keyword = run(EplArgs(preset="tiny", cache_dir=str(organism_cache), out=str(tmp_path / "kw"), random=0,
                          bootstrap=0, progress=False))  # fmt: skip
    harm, kw = rep.row("d_harm", +1), keyword.row("d_harm", +1)
    assert harm.censored or harm.epl >= kw.epl - 0.005
    assert not kw.censored
