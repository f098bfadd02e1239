"""Regenerate every figure in ``figures/`` from stored results, computing the results that are missing.

    python -m landscape.figures                 # render from figures/data/*.json, compute what is missing
    python -m landscape.figures --recompute     # recompute every result on the model organism first
    python -m landscape.figures --only fig1b_narrow_basin

Results live in ``figures/data/<name>.json`` (small, committed); the scans behind them keep their
resumable points under ``figures/.scans/`` (not committed). Interactive plotly versions of the 2D
figures are written as ``figures/<name>.html`` (self-contained, not committed). See ``figures/README.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import atomic_savefig

THRESHOLD = 50.0
PROVIDER_GROUP = "safety_landscape.figures"


@dataclass
class FigureArgs:
    """Arguments of ``python -m landscape.figures``."""

    out: str = field(default="figures", metadata={"help": "figures directory (results in <out>/data)"})
    preset: str = field(default="small", metadata={"help": "organism preset for the landscapes"})
    table7_presets: list[str] = field(
        default_factory=lambda: ["small", "medium"], metadata={"help": "organism presets of the Table 7 EPLs"}
    )
    recompute: bool = field(default=False, metadata={"help": "recompute every result, not only the missing ones"})
    quick: bool = field(default=False, metadata={"help": "coarse grids on the tiny organism (for tests)"})
    only: list[str] | None = field(default=None, metadata={"help": "figure names (default: all)"})
    cache_dir: str | None = field(default=None, metadata={"help": "organism cache root"})
    seed: int = field(default=0, metadata={"help": "organism seed"})
    html: bool = field(default=True, metadata={"help": "also write interactive plotly HTML (--no_html to skip)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    check: bool = field(
        default=False,
        metadata={
            "help": "recompute the cheap results (Table 1 cosines, Table 7 EPLs) and fail if they differ "
            "from the committed ones; writes nothing"
        },
    )


@dataclass
class Context:
    """What the computations share: the organism, the aligned model, normalised directions, an evaluator."""

    args: FigureArgs
    _cache: dict = field(default_factory=dict)

    @property
    def preset(self) -> str:
        return "tiny" if self.args.quick else self.args.preset

    def organism(self, preset: str | None = None):
        from .organism import build_organism

        p = preset or self.preset
        if ("org", p) not in self._cache:
            self._cache[("org", p)] = build_organism(
                p, seed=self.args.seed, cache_dir=self.args.cache_dir, progress=self.args.progress
            )
        return self._cache[("org", p)]

    def model(self, preset: str | None = None):
        """``(model, tokenizer)`` of the preset's aligned stage, loaded once."""
        from .loading import load_model

        p = preset or self.preset
        if ("model", p) not in self._cache:
            self._cache[("model", p)] = load_model(self.organism(p)["aligned"])
        return self._cache[("model", p)]

    def direction(self, name: str, preset: str | None = None):
        p = preset or self.preset
        if ("dir", name, p) not in self._cache:
            self._cache[("dir", name, p)] = self.organism(p).direction(name)
        return self._cache[("dir", name, p)]

    def evaluator(self, preset: str | None = None):
        """Every figure's measurement: the first 80 held-out prompts, 32 greedy tokens, keyword judge + oracle."""
        from .generation import GenerationSettings, HFBackend
        from .judges import CachedJudge, make_judge
        from .organism import world
        from .scan import SafetyEvaluator

        p = preset or self.preset
        if ("eval", p) not in self._cache:
            model, tok = self.model(p)
            self._cache[("eval", p)] = SafetyEvaluator(
                HFBackend(model, tok),
                world.eval_prompts()[:80],
                CachedJudge(make_judge("keyword")),
                GenerationSettings(max_new_tokens=32),
                extra_judges=[make_judge("oracle")],
                keep_responses=False,
            )
        return self._cache[("eval", p)]

    def epl_settings(self, bootstrap: int):
        """The EPL search of the figures; quick (tests) walks coarser to a nearer bound (10 points a censored
        side instead of 50)."""
        from .search import EplSettings

        if self.args.quick:
            return EplSettings(bootstrap=bootstrap, first_step=0.02, max_alpha=0.2, seed=self.args.seed)
        return EplSettings(bootstrap=bootstrap, seed=self.args.seed)

    def scan_dir(self, name: str) -> Path:
        return Path(self.args.out) / ".scans" / f"{name}-{self.preset}"


def _records(res) -> list[dict]:
    return [
        {
            "coords": r["coords"],
            "metrics": {k: r["metrics"][k] for k in ("asr", "asr_ci", "asr_oracle")},
            "sample": r["metrics"]["responses"][0],
        }
        for r in res.records
    ]


# ------------------------------------------------------------------------------------------------- computations


def compute_random_1d(ctx: Context) -> dict:
    from .scan import linspace, scan_1d

    model, _ = ctx.model()
    alphas = linspace(-2, 2, 9 if ctx.args.quick else 41)
    curves = {}
    for name in ("random-0", "random-1", "random-2")[: 1 if ctx.args.quick else 3]:
        res = scan_1d(
            model,
            ctx.direction(name),
            alphas,
            ctx.evaluator(),
            out_dir=ctx.scan_dir(f"1d-{name}"),
            progress=ctx.args.progress,
        )
        curves[name] = _records(res)
    return {"preset": ctx.preset, "curves": curves}


def _scan2d(ctx: Context, key: str, x: str, y: str, alphas, betas) -> dict:
    from .scan import scan_2d

    model, _ = ctx.model()
    res = scan_2d(
        model,
        ctx.direction(x),
        ctx.direction(y),
        alphas,
        betas,
        ctx.evaluator(),
        out_dir=ctx.scan_dir(key),
        progress=ctx.args.progress,
    )
    return {"preset": ctx.preset, "x": x, "y": y, "records": _records(res)}


def compute_random_2d(ctx: Context) -> dict:
    from .scan import linspace

    n = 5 if ctx.args.quick else 21
    return _scan2d(ctx, "random2d", "random-0", "random-1", linspace(-2, 2, n), linspace(-2, 2, n))


NARROW_BETAS = (
    -0.5,
    -0.3,
    -0.2,
    -0.12,
    -0.08,
    -0.05,
    -0.03,
    -0.02,
    -0.01,
    -0.005,
    0.0,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.035,
    0.04,
    0.05,
    0.065,
    0.08,
    0.12,
    0.2,
    0.3,
    0.5,
)


def compute_narrow_basin(ctx: Context) -> dict:
    """d_aligned × d_harm with β refined near 0, where the d_harm edge sits (≈ 0.03 on the organism)."""
    from .scan import linspace

    if ctx.args.quick:
        return _scan2d(ctx, "narrow", "d_aligned", "d_harm", linspace(-0.4, 0.4, 5), [-0.05, 0.0, 0.02, 0.05, 0.1])
    return _scan2d(ctx, "narrow", "d_aligned", "d_harm", linspace(-0.5, 0.5, 21), NARROW_BETAS)


def compute_table1(ctx: Context) -> dict:
    from .organism.tables import table1

    t = table1(ctx.organism(), k=10 if ctx.args.quick else 50)
    return {
        "preset": ctx.preset,
        "rows": [r.__dict__ for r in t.rows],
        "null": t.null,
        "benign_cos": t.extra["benign_cos"],
    }


def compute_table7(ctx: Context) -> dict:
    """EPL along d_aligned, d_harm and two random directions, both sides, on each organism preset."""
    from .search import EplSettings, effective_perturbation_length

    presets = ("tiny",) if ctx.args.quick else tuple(ctx.args.table7_presets)
    out = {}
    for p in presets:
        report = effective_perturbation_length(
            ctx.model(p)[0],
            [ctx.direction(n, p) for n in ("d_aligned", "d_harm", "random-0", "random-1")],
            ctx.evaluator(p),
            ctx.epl_settings(bootstrap=200 if ctx.args.quick else 1000),
            out_dir=Path(ctx.args.out) / ".scans" / f"epl-{p}",
            progress=ctx.args.progress,
        )
        out[p] = [r.__dict__ for r in report.rows]
    return {"threshold": THRESHOLD, "tol": EplSettings().tol, "models": out}


# ------------------------------------------------------------------------------------------------------ renders


def _html(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.html")
    fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    tmp.replace(path)
    return path


def render_random_1d(data: dict, out: Path, html: bool) -> list[Path]:
    from .plotting import curve_from_records, plot_1d, plotly_1d

    curves = [curve_from_records(n, recs, extra=("asr_oracle",)) for n, recs in data["curves"].items()]
    fig = plot_1d(
        curves,
        THRESHOLD,
        title=f"Safety basin along random directions (organism {data['preset']})",
        xlabel="α along a random direction (layer-normalised)",
    )
    paths = [atomic_savefig(fig, out / "fig1a_random_1d.png")]
    if html:
        samples = {
            n: [r["sample"] for r in sorted(recs, key=lambda r: r["coords"][0])] for n, recs in data["curves"].items()
        }
        paths.append(_html(plotly_1d(curves, THRESHOLD, samples), out / "fig1a_random_1d.html"))
    return paths


def _render_2d(data: dict, out: Path, html: bool, stem: str, title: str) -> list[Path]:
    from .plotting import grid_from_records, plot_2d, plotly_2d

    a, b, z = grid_from_records(data["records"])
    paths = [atomic_savefig(plot_2d(a, b, z, data["x"], data["y"], THRESHOLD, title=title), out / f"{stem}.png")]
    _, _, zo = grid_from_records(data["records"], "asr_oracle")
    paths.append(
        atomic_savefig(
            plot_2d(
                a,
                b,
                zo,
                data["x"],
                data["y"],
                THRESHOLD,
                surface=False,
                zlabel="oracle ASR (%)",
                title=f"{data['x']} × {data['y']}: oracle ASR\n(coherent harmful answers only)",
            ),
            out / f"{stem}_oracle.png",
        )
    )
    if html:
        samples = np.full(z.shape, "", dtype=object)
        ia = {v: j for j, v in enumerate(a.tolist())}
        ib = {v: i for i, v in enumerate(b.tolist())}
        for r in data["records"]:
            samples[ib[r["coords"][1]], ia[r["coords"][0]]] = r["sample"]
        paths.append(_html(plotly_2d(a, b, z, data["x"], data["y"], samples, THRESHOLD), out / f"{stem}.html"))
    return paths


def render_random_2d(data: dict, out: Path, html: bool) -> list[Path]:
    return _render_2d(
        data,
        out,
        html,
        "fig1a_random_2d",
        f"Peng et al.'s safety basin: two random directions (organism {data['preset']})",
    )


def render_narrow_basin(data: dict, out: Path, html: bool) -> list[Path]:
    return _render_2d(
        data, out, html, "fig1b_narrow_basin", f"Narrow safety basin: d_aligned × d_harm (organism {data['preset']})"
    )


def render_table1(data: dict, out: Path, html: bool) -> list[Path]:
    from .plotting import plot_cosines

    rows, null = data["rows"], data["null"]
    fig = plot_cosines(
        [r["samples"] for r in rows],
        [r["cos"] for r in rows],
        null["q025"],
        null["q975"],
        null["abs_mean"],
        title=f"cos(d_aligned, d_harm) vs random (organism {data['preset']})",
    )
    return [atomic_savefig(fig, out / "table1_cosines.png")]


def render_table7(data: dict, out: Path, html: bool) -> list[Path]:
    from .plotting import plot_epl_bars

    table, cens = {}, {}
    for model, rows in data["models"].items():
        for r in rows:
            key = f"{r['direction']} {'+' if r['side'] > 0 else '−'}"
            table.setdefault(model, {})[key] = r["epl"]
            cens.setdefault(model, {})[key] = r["censored"]
    fig = plot_epl_bars(table, cens, title="EPL per direction and side")
    return [atomic_savefig(fig, out / "table7_epl.png")]


def compute_judge_agreement(ctx: Context) -> dict:
    """Keyword, guard and classifier judges against the oracle on held-out answers from across a scan."""
    from .judges import ClassifierJudge, GuardJudge, make_judge
    from .organism.judge_models import HELD_OUT_POINTS, agreement

    org = ctx.organism()
    judges = {
        "keyword": make_judge("keyword"),
        "guard": GuardJudge(org.judges["guard"]),
        "classifier": ClassifierJudge(org.judges["classifier"]),
    }
    return {"preset": ctx.preset, "points": [list(p) for p in HELD_OUT_POINTS], **agreement(org, judges)}


def render_judge_agreement(data: dict, out: Path, html: bool) -> list[Path]:
    from .plotting import plot_judge_agreement

    fig = plot_judge_agreement(data, title=f"Judges against the oracle (organism {data['preset']}, held-out answers)")
    return [atomic_savefig(fig, out / "judge_agreement.png")]


FIGURES: dict[str, tuple[Callable[[Context], dict], Callable[[dict, Path, bool], list[Path]]]] = {
    "fig1a_random_1d": (compute_random_1d, render_random_1d),
    "fig1a_random_2d": (compute_random_2d, render_random_2d),
    "fig1b_narrow_basin": (compute_narrow_basin, render_narrow_basin),
    "table1_cosines": (compute_table1, render_table1),
    "table7_epl": (compute_table7, render_table7),
    "judge_agreement": (compute_judge_agreement, render_judge_agreement),
}


def figure_providers() -> dict[str, tuple[Callable, Callable]]:
    """Every figure: ours, then those other installed packages declare in the ``safety_landscape.figures``
    entry-point group (each entry point loads a dict name -> (compute, render); AsFT declares its own)."""
    from importlib.metadata import entry_points

    figures = dict(FIGURES)
    for ep in entry_points(group=PROVIDER_GROUP):
        provided = ep.load()
        clash = sorted(set(provided) & set(figures))
        if clash:
            raise ValueError(f"figure provider {ep.value!r} redefines {', '.join(clash)}")
        figures.update(provided)
    return figures


CHECKED = ("table1_cosines", "table7_epl")
COSINE_TOL = 1e-6  # float reduction order differs between CPUs; the cosines here are ~1e-2


def _compare_table1(old: dict, new: dict) -> list[str]:
    bad = []
    pairs = [(f"N={a['samples']}", a["cos"], b["cos"]) for a, b in zip(old["rows"], new["rows"], strict=True)]
    pairs.append(("benign", old["benign_cos"], new["benign_cos"]))
    for what, a, b in pairs:
        if abs(a - b) > COSINE_TOL:
            bad.append(f"table1_cosines: cos(d_aligned, d_harm {what}) committed {a:+.6f}, recomputed {b:+.6f}")
    return bad


def _compare_table7(old: dict, new: dict) -> list[str]:
    bad = []
    for model, rows in new["models"].items():
        stored = {(r["direction"], r["side"]): r for r in old["models"].get(model, [])}
        for r in rows:
            key = (r["direction"], r["side"])
            o = stored.get(key)
            tol = old.get("tol", 0.005)
            if o is None or o["censored"] != r["censored"] or abs(o["epl"] - r["epl"]) > tol:
                was = "missing" if o is None else f"{o['epl']:.4f}{' (censored)' if o['censored'] else ''}"
                bad.append(
                    f"table7_epl: {model} {key[0]} {key[1]:+d} committed {was}, recomputed {r['epl']:.4f}"
                    f"{' (censored)' if r['censored'] else ''} (tolerance: the search's resolution {tol})"
                )
    return bad


COMPARE = {"table1_cosines": _compare_table1, "table7_epl": _compare_table7}


def check(args: FigureArgs) -> list[str]:
    """Recompute the cheap committed results in a scratch directory; returns the differences (empty: all match)."""
    import tempfile

    out = Path(args.out)
    problems = []
    with tempfile.TemporaryDirectory(prefix="figures-check-") as tmp:
        ctx = Context(FigureArgs(**{**args.__dict__, "out": tmp, "check": False}))
        for name in CHECKED:
            data_file = out / "data" / f"{name}.json"
            if not data_file.is_file():
                problems.append(f"{name}: {data_file} is missing")
                continue
            committed = json.loads(data_file.read_text())
            problems += COMPARE[name](committed, FIGURES[name][0](ctx))
    return problems


def run(args: FigureArgs) -> dict[str, list[Path]]:
    """Render every figure (or ``args.only``), computing the missing results; returns the files written.

    With ``args.check``: recompute the cheap results and raise if they differ from the committed ones.
    """
    from .io import atomic_write_json
    from .results import environment

    if args.check:
        problems = check(args)
        if problems:
            raise ValueError(f"{len(problems)} committed result(s) do not reproduce:\n  " + "\n  ".join(problems))
        return {"checked": [Path(args.out) / "data" / f"{name}.json" for name in CHECKED]}
    figures = figure_providers()
    names = args.only or list(figures)
    unknown = [n for n in names if n not in figures]
    if unknown:
        raise ValueError(f"Unknown figure {unknown[0]!r}. Available: {', '.join(figures)}")
    out = Path(args.out)
    ctx = Context(args)
    written: dict[str, list[Path]] = {}
    for name in names:
        compute, render = figures[name]
        data_file = out / "data" / f"{name}.json"
        if args.recompute or not data_file.is_file():
            t0 = time.perf_counter()
            data = compute(ctx)
            data["seconds"] = round(time.perf_counter() - t0, 1)
            data["environment"] = environment("cpu", "torch.float32")
            data["seed"] = args.seed
            atomic_write_json(data_file, data)
        data = json.loads(data_file.read_text())
        written[name] = render(data, out, args.html)
    return written


def _print(written: dict[str, list[Path]]) -> None:
    if "checked" in written:
        print("check passed: " + ", ".join(str(p) for p in written["checked"]) + " reproduce")
        return
    for name, paths in written.items():
        print(f"{name}: " + ", ".join(str(p) for p in paths))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m landscape.figures``."""
    from .cli import command

    return command([FigureArgs], run, "python -m landscape.figures", __doc__, report=_print)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
