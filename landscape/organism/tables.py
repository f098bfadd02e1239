"""The AsFT paper's Table 1 on the organism: cos(d_aligned, d_harm-N) per harmful fine-tune, beside a random null."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table1Row:
    samples: int
    cos: float
    rel_norm: float
    null_percentile: float


@dataclass
class Table1:
    rows: list[Table1Row]
    null: dict
    d_aligned_rel_norm: float
    extra: dict = field(default_factory=dict)


def table1(org, k: int = 20) -> Table1:
    """cos(d_aligned, d_harm-N) for the organism's harmful fine-tunes, with the random null of cos(d_aligned, r).

    Args:
        org: a built :class:`~landscape.organism.Organism`.
        k: random directions in the null.
    """
    from ..directions import difference
    from ..geometry import cosine, random_null, relative_norm

    d_aligned = difference(org["base"], org["aligned"], name="d_aligned")
    null = random_null(d_aligned, k=k, seed=1000)
    rows = []
    for stage in org.harmful_stages:
        d_harm = difference(org["aligned"], org[stage], name=f"d_{stage}")
        c = cosine(d_aligned, d_harm)
        rows.append(
            Table1Row(int(stage.split("-")[1]), c, relative_norm(d_harm, org["aligned"]), null.percentile_of_abs(c))
        )
    d_benign = difference(org["aligned"], org["benign"], name="d_benign")
    return Table1(
        rows, null.summary(), relative_norm(d_aligned, org["base"]), {"benign_cos": cosine(d_aligned, d_benign)}
    )
