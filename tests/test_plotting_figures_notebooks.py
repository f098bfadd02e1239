import json
import os
from pathlib import Path

import numpy as np
import pytest

from landscape.plotting import (
    Curve,
    curve_from_records,
    grid_from_records,
    plot_1d,
    plot_2d,
    plot_cosines,
    plot_epl_bars,
    plotly_1d,
    plotly_2d,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PNG = b"\x89PNG\r\n\x1a\n"


def _records_1d():
    a = np.linspace(-1, 1, 11)
    return [
        {
            "coords": [float(x)],
            "metrics": {"asr": float(100 * (abs(x) > 0.5)), "asr_ci": [0.0, 10.0], "asr_oracle": 0.0},
        }
        for x in a
    ]


def test_plot_1d_has_curves_bands_threshold_and_epl(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    c = curve_from_records("random-0", _records_1d(), extra=["asr_oracle"])
    c.epl = {1: 0.55, -1: 0.55}
    fig = plot_1d([c, Curve("d_harm", [0, 0.1], [0, 100])], threshold=50)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "random-0" in labels and "random-0 (oracle)" in labels and "d_harm" in labels
    assert any(line.get_label() == "threshold 50%" for line in ax.get_lines())
    assert len(ax.collections) == 1  # one Wilson band (the second curve has none)
    assert sum(1 for line in ax.get_lines() if line.get_xdata()[0] in (0.55, -0.55)) == 2  # EPL markers
    fig.savefig(tmp_path / "a.png")
    fig.savefig(tmp_path / "a.pdf")
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG and (tmp_path / "a.pdf").read_bytes()[:4] == b"%PDF"


def test_plot_2d_nonuniform_grid_boundary_and_surface(tmp_path):
    recs = [
        {"coords": [a, b], "metrics": {"asr": float(100 * (b > 0.03 or a < -0.3))}}
        for a in (-0.4, -0.2, 0.0, 0.2)
        for b in (-0.1, 0.0, 0.01, 0.02, 0.05, 0.3)
    ]
    a, b, z = grid_from_records(recs)
    assert z.shape == (6, 4) and z[list(b).index(0.05), list(a).index(0.0)] == 100
    fig = plot_2d(a, b, z, "d_aligned", "d_harm", threshold=50)
    ax2d, ax3d = fig.axes[0], fig.axes[-1]
    assert ax2d.get_xlabel() == "α along d_aligned" and ax2d.get_ylabel() == "β along d_harm"
    assert ax3d.name == "3d"
    assert any(line.get_label() == "aligned model" for line in ax2d.get_lines())
    fig.savefig(tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG


def test_cosine_and_epl_bars(tmp_path):
    fig = plot_cosines([10, 50], [-0.09, -0.08], -0.006, 0.006, 0.003)
    assert len(fig.axes[0].containers) == 1 and len(fig.axes[0].containers[0]) == 2
    fig = plot_epl_bars(
        {"small": {"d_aligned −": 0.2, "d_harm +": 0.03}, "medium": {"d_aligned −": 0.26}},
        {"small": {"d_aligned −": False, "d_harm +": True}},
    )
    bars = [b for c in fig.axes[0].containers for b in c]
    assert len(bars) == 4 and len([b for b in bars if b.get_hatch()]) == 1


def test_plotly_figures_hover_and_html(tmp_path):
    c = curve_from_records("d_harm", _records_1d())
    fig = plotly_1d([c], threshold=50, samples={"d_harm": [f"answer {i}" for i in range(11)]})
    line = [t for t in fig.data if t.name == "d_harm"][0]
    assert "ASR=" in line.hovertemplate and line.text[0] == "answer 0"
    a, b, z = np.array([0.0, 0.1]), np.array([0.0, 0.2]), np.array([[0.0, 10.0], [60.0, 100.0]])
    fig2 = plotly_2d(a, b, z, "d_aligned", "d_harm", samples=np.array([["s1", "s2"], ["s3", "s4"]], dtype=object))
    kinds = [t.type for t in fig2.data]
    assert kinds.count("contour") == 2 and "surface" in kinds and "scatter" in kinds
    assert "β=" in fig2.data[0].hovertemplate and fig2.data[0].text[1][0] == "s3"
    fig2.write_html(tmp_path / "x.html", include_plotlyjs=True)
    html = (tmp_path / "x.html").read_text()
    assert html.lower().lstrip().startswith("<!doctype html>") and "Plotly.newPlot" in html and "</html>" in html


def test_figures_cli_regenerates_from_scratch_quick(organism_cache, tmp_path, capsys):
    from landscape.figures import figure_providers, main, reference_file
    from landscape.results import cpu_kind, environment

    out = tmp_path / "figs"
    base = ["--out", str(out), "--quick", "--cache-dir", str(organism_cache), "--no-html"]
    assert main(base) == 0
    providers = figure_providers()
    assert {"table2_asft", "fig4a_lambda", "fig4b_ablation"} <= set(providers)  # asft's, found by entry point
    for name in providers:
        assert (out / "data" / f"{name}.json").is_file(), name
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {
        "fig1a_random_1d.png",
        "fig1a_random_2d.png",
        "fig1b_narrow_basin.png",
        "table1_cosines.png",
        "table7_epl.png",
    } <= set(pngs)
    assert all((out / p).read_bytes()[:8] == PNG for p in pngs)
    # the fine-tunes' trajectories on the (d_aligned, d_harm) map, with when their d_harm component grew
    traj = json.loads((out / "data" / "fig_trajectories.json").read_text())
    assert "fig_trajectories_synthetic.png" in pngs and "skipped" in traj["real"]
    for label, r in traj["synthetic"]["runs"].items():
        g = r["growth"]
        assert g["steps"][-1] == r["steps"] and -1 <= g["cos_d_harm"][-1] <= 1, label
        assert g["half_step_norm"] is not None and g["half_step_norm"] <= r["steps"], label
    # a second run renders from stored results without recomputing
    stamp = json.loads((out / "data" / "table1_cosines.json").read_text())
    main(base + ["--only", "table1_cosines"])
    assert json.loads((out / "data" / "table1_cosines.json").read_text()) == stamp
    capsys.readouterr()
    assert main(base + ["--only", "fig9"]) == 2
    assert "error: Unknown figure 'fig9'. Available: fig1a_random_1d" in capsys.readouterr().err
    # --check recomputes Table 1 and Table 7 and compares them with what is stored
    t7 = json.loads((out / "data" / "table7_epl.json").read_text())
    assert t7["environment"]["threads"] >= 1 and "torch" in t7["environment"] and t7["seed"] == 0
    assert main(base + ["--check"]) == 0
    assert "check passed" in capsys.readouterr().out
    stamp["seeds"]["0"]["rows"][0]["cos"] += 0.01
    (out / "data" / "table1_cosines.json").write_text(json.dumps(stamp))
    t7["models"]["tiny"]["seeds"]["0"]["oracle"][2]["epl"] += 0.05
    (out / "data" / "table7_epl.json").write_text(json.dumps(t7))
    assert main(base + ["--check"]) == 2
    err = capsys.readouterr().err
    assert "2 committed result(s) do not reproduce" in err
    assert "table1_cosines: seed 0 cos(d_aligned, d_harm N=10)" in err and "table7_epl: tiny seed 0 oracle" in err
    assert "judge_agreement" in t7["convention"] or "nearer edge" in t7["convention"]
    assert "compared with the committed data" in err and t7["environment"]["cpu"] == cpu_kind()
    # Another kind of CPU trains another organism: it is checked against its own reference, recorded once.
    assert main(base + ["--record_reference"]) == 2
    assert "--record_reference goes with --check" in capsys.readouterr().err
    assert main(base + ["--check", "--record_reference"]) == 0
    ref = reference_file(out, environment("cpu", "torch.float32"))
    assert ref.parent == out / "data" / "check" and cpu_kind().split()[-1] in ref.name
    stored = json.loads(ref.read_text())
    assert stored["environment"]["cpu"] == cpu_kind() and set(stored) >= {"table1_cosines", "table7_epl"}
    assert main(base + ["--check"]) == 0  # the committed data above were altered; this machine's reference was not
    assert str(ref) in capsys.readouterr().out
    stored["table7_epl"]["models"]["tiny"]["seeds"]["0"]["keyword"][2]["epl"] += 0.05
    ref.write_text(json.dumps(stored))
    assert main(base + ["--check"]) == 2
    err = capsys.readouterr().err
    assert "1 committed result(s) do not reproduce (compared with this kind of CPU's reference" in err
    ref.write_text('{"table1_cosines": ')  # a reference cut short: an error naming it, not a comparison
    assert main(base + ["--check"]) == 2
    assert f"{ref}: not a check reference (not valid JSON" in capsys.readouterr().err


def test_committed_figures_data_is_complete():
    root = Path(__file__).resolve().parents[1] / "figures"
    for name in ("fig1a_random_1d", "fig1a_random_2d", "fig1b_narrow_basin", "table1_cosines", "table7_epl"):
        assert (root / "data" / f"{name}.json").is_file() and (root / f"{name}.png").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped_and_runs(path, organism_cache, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("LANDSCAPE_PRESET", "tiny")
    monkeypatch.setenv("SAFETY_LANDSCAPE_CACHE", str(organism_cache))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=dict(os.environ))
    assert any(o.get("output_type") == "display_data" or o.get("data") for c in nb.cells for o in c.get("outputs", []))


def test_check_on_another_kind_of_cpu_holds_results_against_the_seeds_spread():
    """Without this kind of CPU's exact numbers, --check asks whether a recomputed result could be one more seed
    (the committed seeds' 99.9 % prediction interval): the pinned Intel build's seed 0 passes against the
    committed five seeds (so did the pinned AMD build's of caa0768, by hand); a regression does not.
    Pinned references are kept per CPU vendor (an AMD and an Intel CPU train different organisms under the pins)."""
    import copy

    from landscape.figures import CHECKED, SPREAD, _same_kind, reference_file

    root = Path(__file__).resolve().parents[1] / "figures" / "data"
    committed = {n: json.loads((root / f"{n}.json").read_text()) for n in CHECKED}
    intel = json.loads((root / "check" / "pinned-x86_64-avx2-mkl_compatible-2threads-GenuineIntel.json").read_text())
    for name in CHECKED:
        assert SPREAD[name](committed[name], intel[name]) == [], name
    bad = copy.deepcopy(intel)
    bad["table1_cosines"]["seeds"]["0"]["rows"][1]["cos"] = 0.02  # the sign of Table 1 flipped
    bad["table7_epl"]["models"]["small"]["seeds"]["0"]["keyword"][2]["epl"] *= 3  # d_harm's edge three times wider
    t1 = SPREAD["table1_cosines"](committed["table1_cosines"], bad["table1_cosines"])
    t7 = SPREAD["table7_epl"](committed["table7_epl"], bad["table7_epl"])
    assert len(t1) == 1 and "N=50" in t1[0] and "prediction interval" in t1[0]
    assert len(t7) == 1 and "small keyword d_harm +1" in t7[0]
    env = {
        "machine": "x86_64",
        "cpu": "AuthenticAMD AVX2",
        "threads": 2,
        "pinned": "x86_64-avx2-mkl_compatible-2threads",
    }
    assert reference_file("figures", env).name == "pinned-x86_64-avx2-mkl_compatible-2threads-AuthenticAMD.json"
    assert _same_kind(env, dict(env)) and not _same_kind({**env, "cpu": "GenuineIntel AVX2"}, env)
    assert not _same_kind(committed["table1_cosines"]["environment"], env)  # made before CPUs were recorded


def test_a_path_on_a_map_says_how_much_of_the_update_the_plane_holds():
    """The label gives the plane's share of ‖ΔW‖ to two digits (a real fine-tune's 3.5 % must not read as "100 %
    off the plane"), and the map with paths renders with the legend beside it."""
    import numpy as np

    from landscape.plotting import path_label, plot_2d

    pth = {"name": "SFT", "alpha": [0.0, 1e-4], "beta": [0.0, 2e-4], "residual": [0.0, 0.999396], "norm": [0.0, 1.0]}
    assert path_label({**pth, "asr": 100.0}) == "SFT: ASR 100 % at the weights, 3.5 % of ‖ΔW‖ in the plane"
    assert path_label({**pth, "residual": [0.0, 0.0]}) == "SFT: 100 % of ‖ΔW‖ in the plane"
    assert path_label({**pth, "residual": [0.0, 1.0 - 5e-9]}) == "SFT: 0.01 % of ‖ΔW‖ in the plane"
    a = b = np.linspace(-0.01, 0.01, 3)
    fig = plot_2d(a, b, np.zeros((3, 3)), "d_aligned", "d_harm", 50.0, surface=False, paths=[pth])
    assert [t.get_text() for t in fig.legends[0].get_texts()][1] == path_label(pth)
