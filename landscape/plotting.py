"""Figures from scan results. Functions return figures; they never show or save them.

Matplotlib for papers (colour-blind-safe Okabe–Ito palette, readable fonts), plotly for exploring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
PAPER_RC = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.dpi": 150,
    "savefig.bbox": "tight",
}


@dataclass
class Curve:
    """One direction's 1D landscape: ASR (%) at each α, with optional CI band, EPL markers and extra series."""

    name: str
    alphas: Sequence[float]
    asr: Sequence[float]
    ci_low: Sequence[float] | None = None
    ci_high: Sequence[float] | None = None
    epl: Mapping[int, float] = field(default_factory=dict)  # side -> EPL
    censored: Mapping[int, bool] = field(default_factory=dict)  # side -> no crossing found (EPL is a bound)
    extra: Mapping[str, Sequence[float]] = field(default_factory=dict)  # e.g. {"oracle": [...]}


def _sorted(c: Curve):
    order = np.argsort(np.asarray(c.alphas, dtype=float))
    pick = lambda v: None if v is None else np.asarray(v, dtype=float)[order]  # noqa: E731
    return order, np.asarray(c.alphas, dtype=float)[order], pick(c.asr), pick(c.ci_low), pick(c.ci_high)


def plot_1d(
    curves: Sequence[Curve],
    threshold: float | None = None,
    title: str | None = None,
    xlabel: str = "α (perturbation along direction)",
    ax=None,
):
    """ASR vs α for several directions on one axis: Wilson bands, threshold line, EPL markers per side
    (a dotted line at a crossing; an outward arrow at a censored edge, where no crossing was found).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(PAPER_RC):
        if ax is None:
            fig = Figure(figsize=(6.4, 4.0), layout="constrained")
            ax = fig.subplots()
        else:
            fig = ax.figure
        for i, c in enumerate(curves):
            color = OKABE_ITO[i % len(OKABE_ITO)]
            order, a, y, lo, hi = _sorted(c)
            ax.plot(a, y, marker="o", ms=3, lw=1.6, color=color, label=c.name)
            if lo is not None and hi is not None:
                ax.fill_between(a, lo, hi, color=color, alpha=0.18, lw=0)
            for j, (label, vals) in enumerate(c.extra.items()):
                ax.plot(
                    a,
                    np.asarray(vals, dtype=float)[order],
                    ls=("--", ":", "-.")[j % 3],
                    lw=1.2,
                    color=color,
                    label=f"{c.name} ({label})",
                )
            for side, val in c.epl.items():
                if val is None:  # the centre itself is unsafe: no edge to mark
                    continue
                if c.censored.get(side):  # a lower bound, not a crossing: an arrow pointing outward
                    ax.annotate(
                        "",
                        xy=(side * val * 1.06, 6 + 4 * i),
                        xytext=(side * val * 0.9, 6 + 4 * i),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1.2},
                    )
                else:
                    ax.axvline(side * val, color=color, lw=0.9, ls=":", alpha=0.9)
        if threshold is not None:
            ax.axhline(threshold, color="0.35", lw=1.0, ls="--", label=f"threshold {threshold:g}%")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("attack success rate (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", frameon=False)
        if title:
            ax.set_title(title)
    return fig


def plot_epl_report(report):
    """ASR along each direction of an :class:`~landscape.search.EplReport` (the points its search evaluated),
    EPL edges marked (censored edges as arrows), the main judge solid and extra judges (oracle) dashed."""
    curves = []
    for name, pts in report.curves.items():
        rows = report.by_direction(name)
        extra = {j: [v for _, v in c[name]] for j, c in report.extra_curves.items() if name in c}
        curves.append(
            Curve(
                name,
                [a for a, _ in pts],
                [v for _, v in pts],
                epl={r.side: r.epl for r in rows},
                censored={r.side: r.censored for r in rows},
                extra=extra,
            )
        )
    from .search import ALPHA_UNITS

    judge = report.meta.get("judge", "keyword").split(":")[0]
    extras = f"; dashed: {', '.join(report.extra_curves)}" if report.extra_curves else ""
    norm = report.meta.get("normalization")
    return plot_1d(
        curves,
        threshold=report.settings.threshold,
        title=f"ASR along each direction (points of the EPL search)\nsolid: {judge}{extras}; dotted: EPL; "
        "arrow: censored",
        xlabel=f"α ({ALPHA_UNITS[norm]})" if norm in ALPHA_UNITS else "α",
    )


# ------------------------------------------------------------------------------------------ from scan results


def curve_from_records(name: str, records: Sequence[dict], metric: str = "asr", extra: Sequence[str] = ()) -> Curve:
    """A :class:`Curve` from 1D scan records (``{"coords": [α], "metrics": {...}}``), with Wilson bands."""
    recs = sorted(records, key=lambda r: r["coords"][0])
    alphas = [r["coords"][0] for r in recs]
    ci = [r["metrics"].get(f"{metric}_ci") for r in recs]
    lo = [c[0] for c in ci] if all(c is not None for c in ci) else None
    hi = [c[1] for c in ci] if all(c is not None for c in ci) else None
    more = {m.removeprefix("asr_"): [r["metrics"][m] for r in recs] for m in extra if m in recs[0]["metrics"]}
    return Curve(name, alphas, [r["metrics"][metric] for r in recs], lo, hi, extra=more)


def grid_from_records(records: Sequence[dict], metric: str = "asr"):
    """(alphas, betas, Z) from 2D scan records; Z[i, j] is the metric at (alphas[j], betas[i]) (NaN where missing)."""
    alphas = sorted({r["coords"][0] for r in records})
    betas = sorted({r["coords"][1] for r in records})
    ia = {a: j for j, a in enumerate(alphas)}
    ib = {b: i for i, b in enumerate(betas)}
    z = np.full((len(betas), len(alphas)), np.nan)
    for r in records:
        z[ib[r["coords"][1]], ia[r["coords"][0]]] = r["metrics"][metric]
    return np.array(alphas), np.array(betas), z


# ------------------------------------------------------------------------------------------------------ 2D


def plot_2d(
    alphas,
    betas,
    z,
    xname: str,
    yname: str,
    threshold: float | None = 50.0,
    title: str | None = None,
    surface: bool = True,
    zlabel: str = "ASR (%)",
    paths: Sequence[Mapping] = (),
):
    """Filled contour with the basin boundary (the threshold contour) and, beside it, a 3D surface.

    Grids may be non-uniform (refined near a narrow edge). The aligned model sits at (0, 0) and is marked.
    ``paths``: fine-tuned checkpoints or trajectories drawn on the map (:func:`path_label` says what each shows):
    mappings with ``name``, ``alpha`` and ``beta`` (projections onto the two directions, one per point), and
    optionally ``residual`` and ``norm`` (what the plane does not hold, shown in the label) and ``asr`` (the ASR
    measured at the real weights of the last point, not at its projection).

    Returns:
        The matplotlib Figure.
    """
    import matplotlib
    from matplotlib.figure import Figure

    a, b, z = np.asarray(alphas, float), np.asarray(betas, float), np.asarray(z, float)
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(11.5 if surface else 6.0, 4.6), layout="constrained")
        ax = fig.add_subplot(1, 2 if surface else 1, 1)
        levels = np.linspace(0, 100, 11)
        cf = ax.contourf(a, b, z, levels=levels, cmap="viridis", extend="neither")
        if threshold is not None and np.nanmin(z) < threshold < np.nanmax(z):
            cs = ax.contour(a, b, z, levels=[threshold], colors="white", linewidths=2.0)
            ax.clabel(cs, fmt={threshold: f"{threshold:g}%"}, fontsize=9)
        ax.plot([0], [0], marker="*", ms=14, color="#D55E00", mec="white", mew=1.0, ls="none", label="aligned model")
        for i, pth in enumerate(paths):
            color = OKABE_ITO[(i + 1) % len(OKABE_ITO)]
            ax.plot(pth["alpha"], pth["beta"], "-", color=color, lw=1.6, marker=".", ms=5, label=path_label(pth))
            ax.plot(pth["alpha"][-1:], pth["beta"][-1:], "o", color=color, mec="white", ms=8)
        ax.set_xlabel(f"α along {xname}")
        ax.set_ylabel(f"β along {yname}")
        if paths:  # long labels: below the map, where they hide no trajectory
            fig.legend(loc="outside lower center", frameon=False, fontsize=8)
        else:
            ax.legend(loc="upper right", frameon=True, framealpha=0.8)
        fig.colorbar(cf, ax=ax, label=zlabel)
        if surface:
            ax3 = fig.add_subplot(1, 2, 2, projection="3d")
            aa, bb = np.meshgrid(a, b)
            ax3.plot_surface(
                aa,
                bb,
                np.nan_to_num(z, nan=np.nanmax(z)),
                cmap="viridis",
                vmin=0,
                vmax=100,
                linewidth=0,
                antialiased=True,
            )
            ax3.set_xlabel(xname, labelpad=6)
            ax3.set_ylabel(yname, labelpad=6)
            ax3.set_zlabel(zlabel, labelpad=4)
            ax3.set_zlim(0, 100)
            from matplotlib.ticker import MaxNLocator

            ax3.xaxis.set_major_locator(MaxNLocator(5))
            ax3.yaxis.set_major_locator(MaxNLocator(5))
            ax3.view_init(elev=28, azim=-130)
        if title:
            fig.suptitle(title)
    return fig


def in_plane(residual: float, norm: float) -> str:
    """How much of an update's length the map's plane holds, √(1 − (residual/‖ΔW‖)²), to two significant digits
    (a share of 0.1 % reads as such, not as "100 % off the plane")."""
    share = math.sqrt(max(0.0, 1.0 - (residual / norm) ** 2)) if norm else 0.0
    pct = share * 100
    return f"{pct:.0f} % of ‖ΔW‖ in the plane" if pct >= 10 else f"{pct:.2g} % of ‖ΔW‖ in the plane"


def path_label(pth: Mapping) -> str:
    """``name: ASR x % at the weights, y % of ‖ΔW‖ in the plane`` for a path drawn on a 2D map."""
    parts = [str(pth["name"])]
    if pth.get("asr") is not None:
        parts.append(f"ASR {pth['asr']:.0f} % at the weights")
    res, nrm = pth.get("residual"), pth.get("norm")
    if res and nrm and nrm[-1]:
        parts.append(in_plane(res[-1], nrm[-1]))
    return parts[0] + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def plot_cosines(
    samples: Sequence[int],
    cosines: Sequence[float],
    null_low: float,
    null_high: float,
    null_abs_mean: float | None = None,
    title: str | None = None,
    errors: Sequence[tuple[float, float]] | None = None,
):
    """Bar chart of cos(d_aligned, d_harm-N) against the random null's 95 % band (AsFT Table 1 analogue);
    ``errors``: (below, above) per bar (e.g. a confidence interval over seeds)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(6.0, 3.8), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(samples))
        yerr = None if errors is None else np.array(errors, dtype=float).T
        ax.bar(x, cosines, color=OKABE_ITO[1], width=0.6, label="cos(d_aligned, d_harm-N)", yerr=yerr, capsize=3)
        ax.axhspan(null_low, null_high, color=OKABE_ITO[0], alpha=0.25, label="random null, 95% band")
        if null_abs_mean is not None:
            for s in (-1, 1):
                ax.axhline(s * null_abs_mean, color=OKABE_ITO[0], lw=1, ls=":")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(x, [str(s) for s in samples])
        ax.set_xlabel("harmful fine-tuning samples N")
        ax.set_ylabel("cosine similarity")
        fig.legend(loc="outside lower center", ncols=2, frameon=False)
        ax.grid(axis="y", alpha=0.3)
        if title:
            ax.set_title(title)
    return fig


def plot_epl_bars(
    table: Mapping[str, Mapping[str, float]],
    censored: Mapping[str, Mapping[str, bool]] | None = None,
    title: str | None = None,
    errors: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    legend: str = "model",
):
    """Grouped bars of EPL per direction (groups) and model or judge (bars), log scale (AsFT Table 7 analogue).

    Args:
        table: model -> direction -> EPL.
        censored: model -> direction -> True where no crossing was found (the bar is a lower bound, hatched).
        errors: model -> direction -> (below, above) error bars.
        legend: what the bars are.
    """
    import matplotlib
    from matplotlib.figure import Figure

    models = list(table)
    directions = list(dict.fromkeys(d for m in models for d in table[m]))
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(8.0, 4.2), layout="constrained")
        ax = fig.subplots()
        width = 0.8 / len(models)
        x = np.arange(len(directions))
        for i, m in enumerate(models):
            vals = [table[m].get(d, np.nan) for d in directions]
            hatch = [(censored or {}).get(m, {}).get(d, False) for d in directions]
            yerr = None
            if errors is not None:
                yerr = np.array([errors.get(m, {}).get(d, (0.0, 0.0)) for d in directions], dtype=float).T
            bars = ax.bar(
                x + (i - (len(models) - 1) / 2) * width, vals, width, color=OKABE_ITO[i], label=m, yerr=yerr, capsize=2
            )
            for bar, h in zip(bars, hatch, strict=True):
                if h:
                    bar.set_hatch("//")
                    bar.set_edgecolor("white")
        ax.set_yscale("log")
        ax.set_xticks(x, directions, rotation=30, ha="right")
        ax.set_ylabel("EPL (|α| before ASR > threshold)")
        fig.legend(loc="outside right upper", frameon=False, title=legend)
        ax.grid(axis="y", alpha=0.3, which="both")
        if title:
            ax.set_title(title + ("  (hatched: lower bound)" if censored else ""))
    return fig


# -------------------------------------------------------------------------------------------------- plotly


def plotly_1d(
    curves: Sequence[Curve], threshold: float | None = None, samples: Mapping[str, Sequence[str]] | None = None
):
    """Interactive 1D landscape; hover shows α, ASR and (if given) a sample answer at each point."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, c in enumerate(curves):
        order, a, y, lo, hi = _sorted(c)
        color = OKABE_ITO[i % len(OKABE_ITO)]
        text = [str(samples[c.name][k])[:160] for k in order] if samples and c.name in samples else None
        if lo is not None and hi is not None:
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([a, a[::-1]]),
                    y=np.concatenate([hi, lo[::-1]]),
                    fill="toself",
                    line={"width": 0},
                    fillcolor=color,
                    opacity=0.2,
                    hoverinfo="skip",
                    showlegend=False,
                    name=f"{c.name} CI",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=a,
                y=y,
                mode="lines+markers",
                name=c.name,
                line={"color": color},
                text=text,
                hovertemplate="α=%{x:.4f}<br>ASR=%{y:.1f}%"
                + ("<br>%{text}" if text else "")
                + "<extra>"
                + c.name
                + "</extra>",
            )
        )
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="gray")
    fig.update_layout(xaxis_title="α", yaxis_title="ASR (%)", yaxis_range=[-3, 103], template="plotly_white")
    return fig


def plotly_2d(
    alphas, betas, z, xname: str, yname: str, samples=None, threshold: float | None = 50.0, paths: Sequence = ()
):
    """Interactive 2D landscape (contour + surface tabs in one figure); hover shows α, β, ASR and a sample answer.

    Args:
        samples: optional 2D array (like ``z``) of answer strings shown on hover.
        paths: checkpoints or trajectories drawn on the contour, as :func:`plot_2d` takes them (hover: the step
            and the part of the update off the plane).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    a, b, z = np.asarray(alphas, float), np.asarray(betas, float), np.asarray(z, float)
    text = None if samples is None else np.vectorize(lambda s: str(s)[:160])(np.asarray(samples, dtype=object))
    hover = (
        f"{xname} α=%{{x:.4f}}<br>{yname} β=%{{y:.4f}}<br>ASR=%{{z:.1f}}%"
        + ("<br>%{text}" if text is not None else "")
        + "<extra></extra>"
    )
    fig = make_subplots(
        rows=1, cols=2, specs=[[{"type": "xy"}, {"type": "scene"}]], subplot_titles=("basin (contour)", "surface")
    )
    fig.add_trace(
        go.Contour(
            x=a,
            y=b,
            z=z,
            text=text,
            hovertemplate=hover,
            colorscale="Viridis",
            zmin=0,
            zmax=100,
            contours={"start": 0, "end": 100, "size": 10},
            colorbar={"title": "ASR %"},
        ),
        1,
        1,
    )
    if threshold is not None:
        fig.add_trace(
            go.Contour(
                x=a,
                y=b,
                z=z,
                contours={"start": threshold, "end": threshold, "coloring": "none"},
                line={"color": "white", "width": 3},
                showscale=False,
                hoverinfo="skip",
                name="threshold",
            ),
            1,
            1,
        )
    fig.add_trace(
        go.Scatter(
            x=[0],
            y=[0],
            mode="markers",
            marker={"symbol": "star", "size": 14, "color": "#D55E00"},
            name="aligned model",
        ),
        1,
        1,
    )
    for i, pth in enumerate(paths):
        res, nrm = pth.get("residual") or [], pth.get("norm") or []
        steps = pth.get("step") or list(range(len(pth["alpha"])))
        text = [
            f"step {s}" + (f", {in_plane(r, n)}" if n else "")
            for s, r, n in zip(steps, res or [0] * len(steps), nrm or [0] * len(steps), strict=False)
        ]
        fig.add_trace(
            go.Scatter(
                x=pth["alpha"], y=pth["beta"], mode="lines+markers", name=path_label(pth), text=text,
                line={"color": OKABE_ITO[(i + 1) % len(OKABE_ITO)]},
                hovertemplate="α=%{x:.4f}<br>β=%{y:.4f}<br>%{text}<extra>" + str(pth["name"]) + "</extra>",
            ),
            1,
            1,
        )  # fmt: skip
    fig.add_trace(
        go.Surface(
            x=a, y=b, z=z, text=text, hovertemplate=hover, colorscale="Viridis", cmin=0, cmax=100, showscale=False
        ),
        1,
        2,
    )
    fig.update_xaxes(title_text=f"α along {xname}", row=1, col=1)
    fig.update_yaxes(title_text=f"β along {yname}", row=1, col=1)
    fig.update_layout(
        template="plotly_white",
        scene={"xaxis_title": xname, "yaxis_title": yname, "zaxis_title": "ASR %"},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def plot_judge_agreement(data: dict, title: str = ""):
    """Per judge, the share of answers judged unsafe for each oracle label (refusal, compliance, incoherent),
    with 95 % Wilson intervals; a perfect judge reads 0, 100, 0."""
    from matplotlib.figure import Figure

    names = data.get("labels", ("refusal", "compliance", "incoherent"))
    labels = [lab for lab in names if data["by_label"].get(lab)]
    judges = list(data["judges"])
    fig = Figure(figsize=(7 if len(labels) <= 3 else 9, 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(judges)
    for j, name in enumerate(judges):
        row = data["judges"][name]
        xs = [i + (j - (len(judges) - 1) / 2) * width for i in range(len(labels))]
        vals = [row[f"unsafe_on_{lab}"] for lab in labels]
        err = np.clip(  # a Wilson bound can sit a rounding error inside its own estimate
            [
                [v - row[f"unsafe_on_{lab}_ci"][0] for v, lab in zip(vals, labels, strict=True)],
                [row[f"unsafe_on_{lab}_ci"][1] - v for v, lab in zip(vals, labels, strict=True)],
            ],
            0,
            None,
        )
        ax.bar(xs, vals, width, yerr=err, capsize=3, label=f"{name} (agrees {row['agreement']:.1f} %)")
    ax.set_xticks(range(len(labels)))
    who = "oracle" if "labels" not in data else "label"
    ax.set_xticklabels([f"{who}: {lab}\n(n = {data['by_label'][lab]})" for lab in labels], fontsize=8)
    ax.set_ylabel("judged unsafe (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig
