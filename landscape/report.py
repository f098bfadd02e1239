"""One self-contained HTML page for a run: ``python -m landscape.report RUN_DIR [--out FILE]``.

Reads what a run wrote and nothing else, and works offline (plotly's script is inlined once):

- an EPL run (``results.json`` of ``python -m landscape.epl``): the EPL table, ASR along every direction, and for
  each direction and side **the answers at the edge**: the points just inside and just past the crossing (the
  last looked at when the edge is censored), every answer with each judge's verdict, its coherence mark and NLL
  and whether it stopped early;
- a scan (``run.json`` + ``points.jsonl`` of ``python -m landscape.scan``): the points' table, the curve or the
  map, and the answers where ASR crosses the threshold along each axis through the centre;
- an AsFT run (``train_log.json`` of ``python -m asft.train``): the losses, the update's trajectory
  (:mod:`asft.trajectory`), the configuration and the anchor's verification.

Every page ends with the environment and provenance the run recorded. Answers can be filtered by text and by
verdict. The page is written atomically (``report.html`` in the run directory by default).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

from .io import atomic_write_text, loads, read_json

REPORT_HTML = "report.html"
EDGE_POINTS = 2  # points shown on each side of a crossing
THRESHOLD = 50.0

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.unsafe td.verdict{color:#b00;font-weight:600} tr.safe td.verdict{color:#070}
td.answer{max-width:560px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:12px}
.controls{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd}
"""

SCRIPT = """
function applyFilter(){
  var q=document.getElementById('filter').value.toLowerCase(), v=document.getElementById('verdict').value;
  var shown=0;
  document.querySelectorAll('table.answers tbody tr').forEach(function(tr){
    var ok=(!q||tr.textContent.toLowerCase().indexOf(q)>=0)&&(!v||tr.classList.contains(v));
    tr.style.display=ok?'':'none'; if(ok) shown++;
  });
  document.getElementById('shown').textContent=shown;
}
window.addEventListener('load',function(){
  if(document.getElementById('filter')){applyFilter();}
  document.getElementById('errors').textContent=window.__errors.join('\\n');
  document.body.setAttribute('data-plots',document.querySelectorAll('.js-plotly-plot').length);
});
"""

ERRORS_HOOK = """
window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push('error: '+e.message);});
(function(){var ce=console.error;console.error=function(){window.__errors.push(
  Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(x, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return "∞" if x > 0 else ("−∞" if x < 0 else "NaN")
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def table(headers: list[str], rows: list[list], table_id: str = "", cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="num">{_e(_num(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{_e(c)}</td>" for c in r
        )  # fmt: skip
        body.append(f"<tr>{cells}</tr>")
    attrs = (f' id="{table_id}"' if table_id else "") + (f' class="{cls}"' if cls else "")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Page:
    """HTML pieces in order; the first plotly figure carries plotly's script, inlined."""

    def __init__(self, title: str):
        self.title, self.parts, self.plots = title, [], 0

    def h(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{_e(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{_e(text)}</p>")

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig) -> None:
        """A plotly figure (its script inlined with the first one: the page needs no network)."""
        fig.update_layout(height=460)
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=self.plots == 0, default_height="460px"))
        self.plots += 1

    def json(self, title: str, data) -> None:
        self.h(title, 3)
        self.parts.append(f"<pre>{_e(json.dumps(data, indent=1, default=str, ensure_ascii=False))}</pre>")

    def html(self) -> str:
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(self.title)}</title>'
            f"<style>{STYLE}</style><script>{ERRORS_HOOK}</script></head><body>"
            f"<h1>{_e(self.title)}</h1>{''.join(self.parts)}"
            f'<h2>Page errors</h2><pre id="errors"></pre><script>{SCRIPT}</script></body></html>'
        )


# ---------------------------------------------------------------------------------------------- run contents


def read_points(run_dir: Path) -> list[dict]:
    """Every stored point of a run (all ranks' files; a torn last line is skipped, as the store does)."""
    recs: dict[tuple, dict] = {}
    for f in sorted(run_dir.glob("points*.jsonl")):
        for line in f.read_bytes().splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                r = loads(line)
            except json.JSONDecodeError:
                break
            recs[(r["series"], tuple(r["coords"]))] = r
    return list(recs.values())


def run_prompts(run: dict, prompts_file: str | None, limit: int | None = None) -> list[str] | None:
    """The run's prompts when its prompt file is still there and its hash matches the run's (else None)."""
    from .data import load_prompts
    from .io import sha256_text

    want = (run.get("evaluator") or {}).get("prompts_sha256")
    if not prompts_file or not want or not Path(prompts_file).is_file():
        return None
    try:
        prompts = load_prompts(prompts_file, limit=limit)
    except (ValueError, OSError):
        return None
    return prompts if sha256_text(prompts) == want else None


def _judges(metrics: dict) -> list[str]:
    return [k.removeprefix("unsafe_") for k in metrics if k.startswith("unsafe_")]


def answer_rows(label: str, rec: dict, prompts: list[str] | None) -> list[str]:
    """One <tr> per answered prompt of a point: α, prompt, answer, verdicts, coherence, NLL, stopped."""
    m = rec["metrics"]
    responses = m.get("responses") or []
    unsafe = m.get("unsafe", "")
    coherent, nll, stopped = m.get("coherent", ""), m.get("nll") or [], m.get("stopped", "")
    others = _judges(m)
    out = []
    for i, ans in enumerate(responses):
        if ans is None or i >= len(unsafe) or unsafe[i] == "-":
            continue
        bad = unsafe[i] == "1"
        extra = " ".join(f"{j}:{'unsafe' if m[f'unsafe_{j}'][i] == '1' else 'safe'}" for j in others)
        coh = "" if i >= len(coherent) or coherent[i] == "-" else ("coherent" if coherent[i] == "1" else "babble")
        cells = [
            _e(label),
            f'<td class="num">{_e(", ".join(_num(float(c)) for c in rec["coords"]))}</td>',
            f'<td class="num">{i}</td>',
            f"<td>{_e(prompts[i]) if prompts and i < len(prompts) else ''}</td>",
            f'<td class="answer">{_e(ans)}</td>',
            f'<td class="verdict">{"unsafe" if bad else "safe"}</td>',
            f"<td>{_e(extra)}</td>",
            f"<td>{coh}</td>",
            f'<td class="num">{_e(_num(nll[i]) if i < len(nll) and nll[i] is not None else "")}</td>',
            f"<td>{'yes' if i < len(stopped) and stopped[i] == '1' else ''}</td>",
        ]
        out.append(f'<tr class="{"unsafe" if bad else "safe"}"><td>{cells[0]}</td>{"".join(cells[1:])}</tr>')
    return out


ANSWER_HEADERS = ["where", "coords", "#", "prompt", "answer", "judge", "other judges", "coherence", "NLL", "stopped"]


def answers_section(page: Page, groups: list[tuple[str, list[tuple[str, dict]]]], prompts) -> None:
    """The filter controls and one answers table per (title, [(label, point record)])."""
    page.h("Answers at the edge")
    page.raw(
        '<div class="controls">filter <input id="filter" oninput="applyFilter()" placeholder="text in any cell"> '
        '<select id="verdict" onchange="applyFilter()"><option value="">all verdicts</option>'
        '<option value="unsafe">unsafe</option><option value="safe">safe</option></select> '
        '<span id="shown"></span> answers shown</div>'
    )
    if prompts is None:
        page.p("The prompts' texts are not shown: the run's prompt file is gone or no longer matches its hash.")
    for title, points in groups:
        page.h(title, 3)
        rows = [row for label, rec in points for row in answer_rows(label, rec, prompts)]
        head = "".join(f"<th>{_e(h)}</th>" for h in ANSWER_HEADERS)
        page.raw(f'<table class="answers"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _edge_points(recs: list[dict], lo: float, hi: float | None) -> list[tuple[str, dict]]:
    """Up to EDGE_POINTS answered points at |α| ≤ lo (inside) and at |α| ≥ hi (past), nearest first."""
    answered = [r for r in recs if r["metrics"].get("responses")]
    inside = sorted((r for r in answered if abs(r["coords"][0]) <= lo + 1e-12), key=lambda r: -abs(r["coords"][0]))
    past = [] if hi is None else sorted(
        (r for r in answered if abs(r["coords"][0]) >= hi - 1e-12), key=lambda r: abs(r["coords"][0])
    )  # fmt: skip
    return [("inside", r) for r in inside[:EDGE_POINTS][::-1]] + [("past", r) for r in past[:EDGE_POINTS]]


def epl_page(run_dir: Path) -> Page:
    from .plotting import Curve, plotly_1d
    from .search import CENTER, EplReport

    rep = EplReport.load(run_dir)
    run = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    page = Page(f"EPL run: {run_dir.name}")
    page.p(
        f"centre ASR {rep.center_asr:.1f} % ({rep.metric}); threshold {rep.settings.threshold:g} %"
        f"{' above the centre' if rep.settings.relative else ''}; {rep.evaluations} points evaluated, "
        f"{rep.generated_tokens} tokens generated in {rep.seconds:.1f} s"
    )
    page.h("EPL table")
    rows = [
        [r.direction, f"{r.side:+d}", None if r.epl is None else float(r.epl), float(r.bracket[0]),
         float(r.bracket[1]), "yes" if r.censored else "", r.ratio_to_harm, r.evaluations]
        for r in rep.rows
    ]  # fmt: skip
    page.raw(table(["direction", "side", "EPL", "bracket lo", "bracket hi", "censored", "ratio", "points"], rows,
                   table_id="epl-table"))  # fmt: skip
    if rep.cosines:
        page.raw(table(["pair", "cosine"], [[k, float(v)] for k, v in rep.cosines.items()], table_id="cosines"))
    page.h("ASR along each direction")
    curves = [Curve(n, [a for a, _ in c], [v for _, v in c]) for n, c in rep.curves.items()]
    fig = plotly_1d(curves, rep.settings.threshold)
    for r in rep.rows:
        if r.epl is not None and not r.censored:
            fig.add_vline(x=r.side * r.epl, line_dash="dot", line_color="gray")
    page.figure(fig)
    points = read_points(run_dir)
    center = [r for r in points if r["series"] == CENTER]
    groups = []
    for r in rep.rows:
        recs = center + [p for p in points if p["series"] == r.direction and p["coords"][0] * r.side > 0]
        lo, hi = float(r.bracket[0]), float(r.bracket[1])
        edge = _edge_points(recs, lo, None if (r.censored or not math.isfinite(hi)) else hi)
        if r.center_unsafe or r.epl is None:
            word = "the centre is already past the threshold"
        elif r.censored:
            word = f"censored beyond {lo:g}"
        else:
            word = f"edge {r.epl:.4f} (bracket {lo:g} – {hi:g})"
        groups.append((f"{r.direction} {'+' if r.side > 0 else '−'} side: {word}", edge))
    args = rep.meta.get("args") or {}
    prompts = run_prompts(run, rep.meta.get("prompts_file"), args.get("limit"))
    answers_section(page, groups, prompts)
    page.h("Environment and provenance")
    page.json("run", {k: v for k, v in run.items()})
    page.json("report", {k: v for k, v in rep.meta.items() if k != "args"})
    page.json("arguments", args)
    return page


def scan_page(run_dir: Path) -> Page:
    from .plotting import curve_from_records, grid_from_records, plotly_1d, plotly_2d

    run = read_json(run_dir / "run.json")
    points = read_points(run_dir)
    if not points:
        raise ValueError(f"{run_dir}: the run has no points yet")
    names = [d["name"] for d in run.get("directions", [])]
    page = Page(f"Scan: {run_dir.name} ({' x '.join(names)})")
    dims = len(points[0]["coords"])
    keys = ["asr", "asr_coherent", "babble", "n"]
    rows = [
        [", ".join(_num(float(c)) for c in p["coords"])] + [p["metrics"].get(k) for k in keys]
        for p in sorted(points, key=lambda p: p["coords"])
    ]
    page.h("Points")
    page.raw(table(["coords", *keys], rows, table_id="points-table"))
    page.h("ASR")
    if dims == 1:
        page.figure(plotly_1d([curve_from_records(names[0], points)], THRESHOLD))
        axes = [(names[0], points)]
    else:
        a, b, z = grid_from_records(points)
        page.figure(plotly_2d(a, b, z, names[0], names[1], None, THRESHOLD))
        axes = [
            (names[0], [{**p, "coords": [p["coords"][0]]} for p in points if p["coords"][1] == 0]),
            (names[1], [{**p, "coords": [p["coords"][1]]} for p in points if p["coords"][0] == 0]),
        ]
    groups = []
    for name, line in axes:
        for side in (1, -1):
            recs = sorted((p for p in line if p["coords"][0] * side >= 0), key=lambda p: abs(p["coords"][0]))
            cross = next((i for i, p in enumerate(recs) if p["metrics"].get("asr", 0) > THRESHOLD), None)
            if not recs:
                continue
            if cross is None:
                groups.append((f"{name} {'+' if side > 0 else '−'}: no crossing", _edge_points(recs, 1e300, None)))
            else:
                lo = abs(recs[cross - 1]["coords"][0]) if cross else 0.0
                hi = abs(recs[cross]["coords"][0])
                groups.append((f"{name} {'+' if side > 0 else '−'}: crosses {THRESHOLD:g} % between {lo:g} and "
                               f"{hi:g}", _edge_points(recs, lo, hi)))  # fmt: skip
    answers_section(page, groups, None)
    page.h("Environment and provenance")
    page.json("run", run)
    return page


def asft_page(run_dir: Path) -> Page:
    import plotly.graph_objects as go

    log = read_json(run_dir / "train_log.json")
    cfg = log.get("config", {})
    page = Page(f"AsFT run: {run_dir.name} ({cfg.get('method', '?')})")
    page.p(
        f"method {cfg.get('method')}, form {cfg.get('form')}, lambda {cfg.get('lambda_reg')}, mode {cfg.get('mode')}; "
        f"{log.get('n_train')} training examples ({log.get('n_harmful')} harmful), {log.get('seconds', 0):.1f} s"
    )
    steps = [e for e in log.get("log", []) if "loss" in e]
    page.h("Training loss")
    page.raw(table(["step", "loss", "task_loss", "asft_reg"],
                   [[e.get("step"), e.get("loss"), e.get("task_loss"), e.get("asft_reg")] for e in steps],
                   table_id="loss-table"))  # fmt: skip
    fig = go.Figure()
    for k in ("loss", "task_loss", "asft_reg"):
        xs = [e["step"] for e in steps if k in e]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=[e[k] for e in steps if k in e], mode="lines+markers", name=k))
    fig.update_layout(xaxis_title="step", template="plotly_white")
    page.figure(fig)
    traj_file = run_dir / "trajectory.json"
    if traj_file.is_file():
        pts = read_json(traj_file)["points"]
        page.h("Trajectory of the update")
        cols = ["step", "norm", "cos_d_aligned", "share", "share_null", "alpha", "beta", "residual"]
        page.raw(table(cols, [[p.get(c) for c in cols] for p in pts], table_id="trajectory-table"))
        fig = go.Figure()
        for k in ("cos_d_aligned", "share", "share_null"):
            xs = [p["step"] for p in pts if p.get(k) is not None]
            if xs:
                fig.add_trace(go.Scatter(x=xs, y=[p[k] for p in pts if p.get(k) is not None], name=k))
        fig.update_layout(xaxis_title="step", template="plotly_white")
        page.figure(fig)
    if (run_dir / "anchor_verification.json").is_file():
        page.json("Anchor verification", read_json(run_dir / "anchor_verification.json"))
    page.h("Environment and provenance")
    page.json("configuration", cfg)
    return page


def build(run_dir: str | Path) -> Page:
    """The page for a run directory (its kind read from what it holds)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"run directory {str(d)!r} does not exist")
    if (d / "results.json").is_file():
        return epl_page(d)
    if (d / "train_log.json").is_file():
        return asft_page(d)
    if (d / "run.json").is_file():
        return scan_page(d)
    raise ValueError(
        f"{d}: not a run directory (no results.json of an EPL run, no run.json of a scan, no train_log.json of "
        "an AsFT run)"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    page = build(run_dir)
    return atomic_write_text(Path(out) if out else Path(run_dir) / REPORT_HTML, page.html())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m landscape.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="an EPL, scan or AsFT run directory")
    ap.add_argument("--out", default=None, help=f"the HTML file (default: RUN_DIR/{REPORT_HTML})")
    a = ap.parse_args(argv)
    try:
        path = write_report(a.run_dir, a.out)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
