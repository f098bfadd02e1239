"""Every command: help shows defaults and choices, a bad argument is one line and exit 2, console scripts agree."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = {  # module -> (console script, a bad argument, the message it must give)
    "landscape.epl": ("landscape-epl", ["--threshold", "150"], "threshold must be an ASR in [0, 100] %, got 150"),
    "landscape.scan": (
        "landscape-scan",
        # with --aligned: on the organism (no --aligned) --judge guard uses the organism's trained guard
        ["--aligned", "m", "--prompts", "p.csv", "--direction", "d_harm", "--alphas", "0:1:3", "--out", "x"]
        + ["--judge", "guard"],
        "judge 'guard' needs --judge_path",
    ),
    "landscape.directions": ("landscape-directions", ["compute", "--out", "x"], "give exactly one of --start/--end"),
    "landscape.judges": (
        "landscape-judges",
        ["--judge", "refusal", "--answers", "nowhere.jsonl", "--out", "x.jsonl"],
        "nowhere.jsonl: no such answers file",
    ),
    "landscape.gguf": ("landscape-gguf", ["--gguf", "nowhere.gguf", "--out", "x"], "nowhere.gguf"),
    "landscape.organism": ("landscape-organism", ["--preset", "huge"], "invalid choice: 'huge'"),
    "landscape.figures": ("landscape-figures", ["--only", "fig9", "--out", "{tmp}"], "Unknown figure 'fig9'"),
    "asft.train": ("asft-train", ["--lambda", "-1"], "--lambda must be >= 0, got -1"),
    "asft.evaluate": (
        "asft-evaluate",
        ["--model", "m", "--harmful_prompts", "p", "--judge", "classifier"],
        "judge 'classifier' needs --judge_path",
    ),
}


def _main(module: str):
    import importlib

    packages = ("landscape.scan", "landscape.directions", "landscape.organism", "landscape.judges")
    return importlib.import_module(module + ".__main__" if module in packages else module).main


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_bad_argument_is_one_line_and_exit_2(module, tmp_path, capsys):
    _, argv, message = COMMANDS[module]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert _main(module)(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_shows_defaults_and_choices(module, capsys):
    main = _main(module)
    argv = ["compute", "--help"] if module == "landscape.directions" else ["--help"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "(default:" in out
    if module in ("landscape.epl", "landscape.scan"):
        from landscape.judges import available_judges

        assert "{" + ",".join(available_judges()) + "}" in out and "(default: keyword)" in out


@pytest.mark.parametrize("module", ["landscape.epl", "landscape.directions", "asft.train"])
def test_console_script_and_python_m_agree(module, tmp_path):
    script, argv, message = COMMANDS[module]
    exe = shutil.which(script) or str(Path(sys.executable).parent / script)
    if not Path(exe).is_file():
        pytest.skip(f"console script {script} is not installed (pip install -e .)")
    for cmd in ([exe, *argv], [sys.executable, "-m", module, *argv]):
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_python_m_scan_prints_no_runpy_warning(tmp_path):
    res = subprocess.run(
        [sys.executable, "-W", "always", "-m", "landscape.scan", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "found in sys.modules" not in res.stderr


def test_no_device_is_a_one_line_error(organism_cache, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from landscape.epl import main

    argv = ["--preset", "tiny", "--cache_dir", str(organism_cache), "--device", "cuda", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--device 'cuda': CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------- directions command


def test_directions_compute_with_a_trailing_slash_and_table_positionals(organism, tmp_path, capsys):
    from landscape.directions.__main__ import main

    out = f"{tmp_path / 'd_aligned'}/"  # as README writes it
    argv = ["compute", "--start", str(organism["base"]), "--end", str(organism["aligned"]), "--name", "d_aligned"]
    assert main([*argv, "--normalization", "layer", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "normalisation layer" in printed
    r0 = str(tmp_path / "r0")
    assert main(["compute", "--random_like", str(organism["aligned"]), "--out", r0]) == 0
    assert main(["table", out, r0, "--by", "module"]) == 0
    assert "d_aligned" in capsys.readouterr().out
    assert main([*argv, "--out", out]) == 2  # now it exists
    assert "already exists and is not empty" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ EPL library


def test_epl_report_round_trips_and_bad_reports_are_named(epl_report, tmp_path):
    from landscape.search import EplReport

    report, out = epl_report
    again = EplReport.load(out)
    assert json.loads(json.dumps(again.to_json())) == json.loads(json.dumps(report.to_json()))
    assert again.row("d_harm", 1).epl == report.row("d_harm", 1).epl and again.settings == report.settings
    assert report.meta["normalization"] == "layer" and report.meta["n_prompts"] == 80
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="bad.json: not an EPL report of format 2"):
        EplReport.load(bad)
    bad.write_text(json.dumps({"format": 2, "rows": [{"direction": "x"}]}))
    with pytest.raises(ValueError, match="bad.json: malformed EPL report"):
        EplReport.load(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EplReport.load(tmp_path / "none.json")


def test_epl_library_in_memory_equals_the_command(organism, epl_report, aligned):
    """No out dir: the same search on the same points as the command's (which the figures reuse)."""
    from landscape.backend import HFBackend
    from landscape.generation import GenerationSettings
    from landscape.judges import CachedJudge, make_judge
    from landscape.organism import world
    from landscape.perturb import weights_fingerprint
    from landscape.scan import SafetyEvaluator
    from landscape.search import EplSettings, effective_perturbation_length

    model, tok = aligned
    before = weights_fingerprint(model)
    ev = SafetyEvaluator(world.eval_prompts()[:80], CachedJudge(make_judge("keyword")), GenerationSettings(32))
    lib = effective_perturbation_length(
        HFBackend(model, tok), [organism.direction("d_harm")], ev, EplSettings(bootstrap=0), progress=False
    )
    assert weights_fingerprint(model) == before
    cli = epl_report[0]
    for side in (1, -1):
        assert lib.row("d_harm", side).epl == cli.row("d_harm", side).epl
    assert lib.rows[0].ci is None  # bootstrap=0: no interval claimed
    assert not math.isnan(cli.row("d_harm", 1).ci[0])


def _epl_cmd(cache, out, procs):
    args = ["-m", "landscape.epl", "--preset", "tiny", "--cache_dir", str(cache), "--limit", "24", "--out", str(out)]
    args += ["--bootstrap", "100", "--no_progress"]
    if procs is None:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *args]


def test_epl_on_two_gloo_ranks_equals_one_process(organism, organism_cache, tmp_path):
    pytest.importorskip("torch.distributed.run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_epl_cmd(organism_cache, tmp_path / "one", None), env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(_epl_cmd(organism_cache, tmp_path / "two", 2), env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert a["rows"] == b["rows"] and a["curves"] == b["curves"] and a["center_asr"] == b["center_asr"]
    files = sorted(p.name for p in (tmp_path / "two").glob("points*.jsonl"))
    assert files == ["points.rank000.jsonl", "points.rank001.jsonl"]
    per_rank = [len(f.read_text().splitlines()) for f in sorted((tmp_path / "two").glob("points*.jsonl"))]
    assert all(n > 0 for n in per_rank) and sum(per_rank) == b["total_points"]  # both ranks searched, none twice


@pytest.mark.parametrize("code", ["EROFS", "ENOSPC", "EFBIG", "EACCES", "EDQUOT"])
def test_os_errors_are_one_line(code, capsys):
    import errno

    from landscape.cli import guarded

    err = getattr(errno, code)

    def boom(argv):
        raise OSError(err, os.strerror(err), "/runs/x/points.jsonl")

    assert guarded(boom, []) == 2
    line = capsys.readouterr().err
    assert line.startswith("error: /runs/x/points.jsonl: ") and line.count("\n") == 1


def test_disk_full_mid_run_is_one_line_and_keeps_what_was_written(organism_cache, tmp_path, monkeypatch, capsys):
    import errno

    from landscape.epl import main
    from landscape.results import ResultsStore

    real = ResultsStore.append
    calls = []

    def append(self, *a, **kw):
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(ResultsStore, "append", append)
    out = tmp_path / "full"
    argv = [
        "--preset",
        "tiny",
        "--cache_dir",
        str(organism_cache),
        "--out",
        str(out),
        "--random",
        "0",
        "--no_progress",
    ]
    assert main(argv) == 2
    assert "points.jsonl: no space left on device" in capsys.readouterr().err
    assert len((out / "points.jsonl").read_text().splitlines()) == 3  # what was written stays, for a resume
    monkeypatch.setattr(ResultsStore, "append", real)
    assert main(argv) == 0  # space again: the run resumes from the 3 points


def test_two_runs_into_one_directory_the_second_refuses(organism_cache, tmp_path, capsys):
    from landscape.epl import main
    from landscape.results import ResultsStore

    out = tmp_path / "busy"
    holder = ResultsStore(out, {"run": "first"})  # a first run that is still writing
    try:
        argv = ["--preset", "tiny", "--cache_dir", str(organism_cache), "--out", str(out), "--random", "0"]
        assert main(argv) == 2
        assert "another run is writing to" in capsys.readouterr().err
    finally:
        holder.close()
    assert not (out / "points.jsonl").exists()


def test_scan_command_judges_after_generation_and_draws_its_grid(organism_cache, tmp_path, capsys):
    from landscape.results import ResultsStore
    from landscape.scan.__main__ import main

    out = tmp_path / "s"
    base = ["--preset", "tiny", "--cache_dir", str(organism_cache), "--direction", "d_harm", "--limit", "8"]
    assert main([*base, "--alphas", "0,0.05", "--judge_after", "--out", str(out)]) == 0
    assert "ASR min" in capsys.readouterr().out
    with ResultsStore(out, json.loads((out / "run.json").read_text())) as store:
        recs = store.series("d_harm")
    assert len(recs) == 2 and all("asr" in r["metrics"] and not r["metrics"].get("pending") for r in recs)
    assert (out / "scan.png").read_bytes()[:4] == b"\x89PNG" and "Plotly.newPlot" in (out / "scan.html").read_text()
