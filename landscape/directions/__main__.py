"""Compute, save and compare directions in weight space.

# d_aligned from two checkpoints, streamed to disk
python -m landscape.directions compute --start BASE_DIR --end ALIGNED_DIR --name d_aligned --out d_aligned/
# d_harm from the LoRA adapter an attack produced
python -m landscape.directions compute --adapter ADAPTER_DIR --base ALIGNED_DIR --name d_harm --out d_harm/
# a seeded random direction, layer-normalised like Peng et al.
python -m landscape.directions compute --random-like ALIGNED_DIR --seed 0 --normalization layer --out r0/
# cosine / norm table between saved directions, with a random null for the first one
python -m landscape.directions table d_aligned/ d_harm/ --by module --null 20
# the AsFT paper's Table 1 on the model organism: cos(d_aligned, d_harm-N), N = 10..500, beside the null
python -m landscape.directions table1 --preset small
"""

from __future__ import annotations

import argparse
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


def table1(preset: str = "small", seed: int = 0, k: int = 20, cache_dir=None) -> Table1:
    """cos(d_aligned, d_harm-N) for the organism's harmful fine-tunes, with the random null of cos(d_aligned, r)."""
    from ..geometry import cosine, random_null, relative_norm
    from ..organism import build_organism
    from . import difference

    org = build_organism(preset, seed=seed, cache_dir=cache_dir, progress=False)
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


def _compute(ns) -> int:
    from . import difference, from_adapter, normalize, random_like, save_direction

    given = [x is not None for x in (ns.end, ns.adapter, ns.random_like)]
    if sum(given) != 1:
        raise SystemExit("compute: give exactly one of --start/--end, --adapter, --random-like")
    if ns.end is not None:
        if ns.start is None:
            raise SystemExit("compute: --end needs --start")
        raw_out = None if ns.normalization != "none" else ns.out
        d = difference(ns.start, ns.end, out=raw_out, name=ns.name, kind=ns.kind, progress=True)
        reference = ns.reference or ns.start
    elif ns.adapter is not None:
        d = from_adapter(ns.adapter, base=ns.base, out=None if ns.normalization != "none" else ns.out, name=ns.name)
        reference = ns.reference or ns.base
    else:
        d = random_like(ns.random_like, ns.seed, name=ns.name, out=None if ns.normalization != "none" else ns.out)
        reference = ns.reference or ns.random_like
    if ns.normalization != "none":
        if reference is None:
            raise SystemExit("compute: --normalization needs --reference (or --base with --adapter)")
        d = normalize(d, reference, ns.normalization, blacklist=ns.blacklist or None, out=ns.out)
    elif ns.blacklist:
        raise SystemExit("compute: --blacklist applies with --normalization")
    if d.store.origin != str(ns.out):  # built in memory
        save_direction(d, ns.out)
    print(f"wrote {ns.out}: {d.name} ({d.kind}, {len(d)} tensors, {d.numel():,} values)")
    return 0


def _table(ns) -> int:
    from ..geometry import cosine_table, random_null, relative_norm
    from . import load_direction

    dirs = [load_direction(p) for p in ns.directions]
    if len(dirs) < 1:
        raise SystemExit("table: give at least one direction")
    print(f"{'a':<16} {'b':<16} {'group':<14} {'cos':>10} {'|a|':>10} {'|b|':>10}")
    for i, a in enumerate(dirs):
        for b in dirs[i + 1 :]:
            for r in cosine_table(a, b, by=ns.by):
                print(f"{a.name:<16} {b.name:<16} {r.group:<14} {r.cos:10.3e} {r.norm_a:10.3e} {r.norm_b:10.3e}")
    if ns.reference:
        for d in dirs:
            print(f"|{d.name}| / |theta| = {relative_norm(d, ns.reference):.3e}")
    if ns.null:
        null = random_null(dirs[0], k=ns.null, seed=1000)
        s = null.summary()
        print(
            f"random null for {dirs[0].name} (K={s['k']}): mean {s['mean']:.2e}, std {s['std']:.2e}, "
            f"|cos| mean {s['abs_mean']:.2e}, 95% [{s['q025']:.2e}, {s['q975']:.2e}]"
        )
    return 0


def _table1(ns) -> int:
    t = table1(ns.preset, seed=ns.seed, k=ns.null, cache_dir=ns.cache_dir)
    print(
        f"Table 1 analogue on the organism ({ns.preset}): cos(d_aligned, d_harm-N); |d_aligned|/|theta_base| = "
        f"{t.d_aligned_rel_norm:.3e}"
    )
    print(f"{'N':>5} {'cos':>11} {'|d_harm|/|theta|':>17} {'null |cos| <= this':>19}")
    for r in t.rows:
        print(f"{r.samples:>5} {r.cos:11.3e} {r.rel_norm:17.3e} {r.null_percentile:18.0f}%")
    s = t.null
    print(f"random null (K={s['k']}): mean {s['mean']:.2e}, std {s['std']:.2e}, |cos| mean {s['abs_mean']:.2e}")
    print(f"benign fine-tune: cos(d_aligned, d_benign) = {t.extra['benign_cos']:.3e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..geometry import GROUPINGS
    from . import NORMALIZATIONS

    ap = argparse.ArgumentParser(
        prog="python -m landscape.directions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compute", help="compute a direction and save it")
    c.add_argument("--start", help="checkpoint at alpha = 0 (e.g. the base model)")
    c.add_argument("--end", help="checkpoint at alpha = 1 (e.g. the aligned model)")
    c.add_argument("--kind", default="difference", choices=["difference", "interpolation"])
    c.add_argument("--adapter", help="PEFT LoRA adapter directory")
    c.add_argument("--base", help="base checkpoint of the adapter (checked against it)")
    c.add_argument("--random-like", help="checkpoint whose shapes a seeded Gaussian direction takes")
    c.add_argument("--seed", type=int, default=0, help="seed of the random direction")
    c.add_argument("--normalization", default="none", choices=NORMALIZATIONS)
    c.add_argument("--reference", help="weights the normalisation is relative to (default: start/base)")
    c.add_argument("--blacklist", nargs="*", help="regexes of tensors to zero ('1d' for all 1-D tensors)")
    c.add_argument("--name", help="label, e.g. d_aligned")
    c.add_argument("--out", required=True, help="output directory (safetensors)")
    t = sub.add_parser("table", help="cosine / norm table between saved directions")
    t.add_argument("directions", nargs="+")
    t.add_argument("--by", default="model", choices=GROUPINGS)
    t.add_argument("--null", type=int, default=0, help="K random directions for a null of the first direction")
    t.add_argument("--reference", help="checkpoint for |d|/|theta|")
    t1 = sub.add_parser("table1", help="AsFT Table 1 on the organism")
    t1.add_argument("--preset", default="small")
    t1.add_argument("--seed", type=int, default=0)
    t1.add_argument("--null", type=int, default=20)
    t1.add_argument("--cache-dir", default=None)
    ns = ap.parse_args(argv)
    return {"compute": _compute, "table": _table, "table1": _table1}[ns.cmd](ns)


if __name__ == "__main__":
    from landscape.cli import guarded

    raise SystemExit(guarded(main))
