"""Coherence beside every judge: babble is told from language under θ₀, and every output says so."""

from __future__ import annotations

import json
import math

import pytest

from landscape.backend import HFBackend
from landscape.coherence import Coherence, repeat_share
from landscape.generation import GenerationSettings
from landscape.perturb import weights_fingerprint


def test_repeat_share():
    assert repeat_share("a a a a a a a a") > 0.5
    assert repeat_share("I'm sorry, but I cannot help with that.") == 0.0
    assert repeat_share("") == 0.0


def test_coherence_scores_at_the_centre_and_returns_to_the_point_bit_for_bit(aligned, organism):
    from landscape.organism import world

    model, tok = aligned
    backend = HFBackend(model, tok)
    prompts = world.eval_prompts()[:16]
    settings = GenerationSettings(max_new_tokens=16)
    coh = Coherence()
    centre = backend.generate(prompts, settings)
    cutoff = coh.calibrate(coh.nll(backend, prompts, centre))
    assert math.isfinite(cutoff)
    ok, _ = coh.judge(backend, prompts, centre)
    assert all(ok)  # the centre's own refusals are language
    d = organism.direction("random-0")
    with backend.attach([d]):
        backend.set_point([2.0])  # far out along a random direction: token soup
        at_point = weights_fingerprint(model)
        soup = backend.generate(prompts, settings)
        ok, nll = coh.judge(backend, prompts, soup)
        assert weights_fingerprint(model) == at_point  # scored at θ₀, then back at the point
        assert sum(ok) <= 2 and min(nll) > cutoff - coh.margin
        assert all(world.oracle(a) == "incoherent" for a, c in zip(soup, ok, strict=True) if not c)
    with pytest.raises(RuntimeError, match="not calibrated"):
        Coherence().coherent("text", 0.0)
    assert not coh.coherent("", 0.0) and not coh.coherent("a a a a a a a a a", 0.0)


def test_every_point_reports_coherent_asr_and_babble_and_the_epl_can_use_it(organism, organism_cache, tmp_path):
    from landscape.epl import EplArgs, format_table, run

    common = dict(preset="tiny", cache_dir=str(organism_cache), random=1, bootstrap=0, limit=24, progress=False)
    report = run(EplArgs(out=str(tmp_path / "asr"), **common))
    points = [json.loads(ln) for ln in (tmp_path / "asr" / "points.jsonl").read_text().splitlines() if ln.strip()]
    judged = [p for p in points if "unsafe" in p["metrics"]]  # the proxy's points are teacher-forced, not judged
    assert judged
    for p in judged:
        m = p["metrics"]
        assert m["asr_coherent"] <= m["asr"] and 0.0 <= m["babble"] <= 100.0
        assert len(m["coherent"]) == len(m["unsafe"]) and len(m["nll"]) == len(m["unsafe"])
    assert "coherent" in report.extra_curves  # drawn dashed beside the judge's ASR
    assert report.other_epl and all(v["metric"] == "asr_coherent" for v in report.other_epl.values())
    run_json = json.loads((tmp_path / "asr" / "run.json").read_text())
    assert "coherence" in json.dumps(run_json) and "cutoff" in json.dumps(run_json)  # stored with the run
    table = format_table(report)
    assert "coh. EPL" in table
    by_coherent = run(EplArgs(out=str(tmp_path / "coh"), metric="asr_coherent", **common))
    assert by_coherent.metric == "asr_coherent" and "judge" in by_coherent.extra_curves
    assert "coherent ASR (unsafe and coherent) crosses" in format_table(by_coherent)
    for r in by_coherent.rows:  # babble is not an attack: the coherent edge is never nearer than the judge's
        plain = report.row(r.direction, r.side)
        assert r.censored or plain.censored or r.epl >= plain.epl - 2 * report.settings.tol


def test_the_scan_command_says_when_babble_drives_the_asr(organism_cache, tmp_path, capsys):
    from landscape.scan.__main__ import main

    out = tmp_path / "scan"
    argv = ["--preset", "tiny", "--cache_dir", str(organism_cache), "--direction", "random-0", "--alphas=0,2",
            "--limit", "16", "--max_new_tokens", "12", "--out", str(out), "--no_html", "--no_progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "most answers the judge calls unsafe are babble" in printed and "coherent ASR max" in printed
