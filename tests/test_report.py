"""The run report (``python -m landscape.report``): one self-contained page per EPL, scan or AsFT run, opened in a
real headless browser where one is installed (Debian's chromium; .ci/run installs it where it can)."""

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from landscape.report import main as report_main

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="needs a headless Chromium (apt-get install chromium); .ci/run installs it where it can"
)


class Cells(HTMLParser):
    """Text of every cell of each table with an id, the body's attributes, the errors box and script sources."""

    def __init__(self):
        super().__init__()
        self.tables, self.body, self.errors, self.external = {}, {}, None, []
        self._table = self._row = self._cell = None
        self._in_errors = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "table" and a.get("id"):
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "pre" and a.get("id") == "errors":
            self._in_errors, self.errors = True, ""
        elif tag == "script" and a.get("src"):
            self.external.append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._in_errors = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_errors:
            self.errors += data


def parse(text: str) -> Cells:
    p = Cells()
    p.feed(text)
    return p


def browse(page, tmp_path):
    """The DOM after the page's scripts ran, and a screenshot, from headless Chromium."""
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
    ]  # fmt: skip
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [*common, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    return dom.stdout, shot


def _fmt(x) -> str:
    return "" if x is None else f"{x:.4f}"


def test_epl_report_holds_the_table_the_curves_and_the_answers_at_each_edge(epl_report, tmp_path):
    report, out = epl_report
    page = tmp_path / "epl.html"
    assert report_main([str(out), "--out", str(page)]) == 0
    text = page.read_text()
    p = parse(text)
    assert not p.external  # self-contained: no script from the network
    rows = p.tables["epl-table"][1:]
    assert [(r[0], r[1], r[2]) for r in rows] == [(x.direction, f"{x.side:+d}", _fmt(x.epl)) for x in report.rows]
    # one answers table per (direction, side), each with answers inside and past the edge, verdicts marked
    for r in report.rows:
        title = f"{r.direction} {'+' if r.side > 0 else '−'} side"
        assert title in text
    assert text.count('<table class="answers">') == len(report.rows)
    assert '<tr class="unsafe">' in text and '<tr class="safe">' in text
    assert "inside" in text and "past" in text
    # the run's prompts are shown (the organism's prompt file still matches the run's hash)
    from landscape.data import load_prompts

    first = load_prompts(report.meta["prompts_file"])[0]
    assert first.replace("'", "&#x27;") in text or first in text


def test_scan_and_asft_reports_and_bad_directories(organism, organism_cache, ft_data, tmp_path, capsys):
    from asft.config import AsftConfig
    from asft.finetune import fine_tune
    from landscape.scan.__main__ import main as scan

    out = tmp_path / "scan"
    assert scan(["--preset", "tiny", "--cache_dir", str(organism_cache), "--direction", "d_harm",
                 "--alphas=-0.3:0.3:5", "--limit", "12", "--max_new_tokens", "12", "--out", str(out),
                 "--no_progress", "--no_html"]) == 0  # fmt: skip
    assert report_main([str(out)]) == 0
    p = parse((out / "report.html").read_text())
    assert len(p.tables["points-table"]) == 1 + 5
    cfg = AsftConfig(
        aligned=str(organism["aligned"]), base=str(organism["base"]), data=str(ft_data),
        output_dir=str(tmp_path / "ft"), method="sft", max_steps=4, learning_rate=1e-3, use_cpu=True,
        report_to="none", disable_tqdm=True, trajectory_steps=2,
    )  # fmt: skip
    fine_tune(cfg)
    assert report_main([str(tmp_path / "ft")]) == 0
    p = parse((tmp_path / "ft" / "report.html").read_text())
    assert [r[0] for r in p.tables["trajectory-table"][1:]] == ["0", "2", "4"]
    capsys.readouterr()
    assert report_main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "report.html").exists()


@needs_browser
def test_the_report_loads_in_a_browser_without_errors_and_its_plots_render(epl_report, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    report, out = epl_report
    page = tmp_path / "epl.html"
    assert report_main([str(out), "--out", str(page)]) == 0
    dom, shot = browse(page, tmp_path)
    p = parse(dom)
    assert p.errors == "", p.errors  # no uncaught error, no console.error while loading
    assert int(p.body.get("data-plots", 0)) == 1 and "main-svg" in dom  # plotly drew its SVG
    rows = p.tables["epl-table"][1:]  # the rendered table is results.json's
    assert [(r[0], r[1], r[2]) for r in rows] == [(x.direction, f"{x.side:+d}", _fmt(x.epl)) for x in report.rows]
    img = imread(shot)[..., :3]
    ink = (img < 0.9).any(axis=-1)
    assert ink.mean() > 0.02 and np.unique(img.reshape(-1, 3), axis=0).shape[0] > 50  # not a blank page
