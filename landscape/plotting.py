"""Figures from scan results. Functions return figures; they never show or save them.

Matplotlib for papers (colour-blind-safe Okabe–Ito palette, readable fonts), plotly for exploring.
"""

from __future__ import annotations

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
    """ASR vs α for several directions on one axis: Wilson bands, threshold line, EPL markers per side.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    with plt.rc_context(PAPER_RC):
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
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
