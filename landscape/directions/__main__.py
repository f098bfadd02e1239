"""Compute, save and compare directions in weight space.

# d_aligned from two checkpoints, streamed to disk
python -m landscape.directions compute --start BASE_DIR --end ALIGNED_DIR --name d_aligned --out d_aligned/
# d_harm from the LoRA adapter an attack produced
python -m landscape.directions compute --adapter ADAPTER_DIR --base ALIGNED_DIR --name d_harm --out d_harm/
# a seeded random direction, layer-normalised like Peng et al.
python -m landscape.directions compute --random_like ALIGNED_DIR --seed 0 --normalization layer --out r0/
# a worst-case direction: the steepest descent of the compliance loss of (prompt, target) pairs at ALIGNED_DIR
python -m landscape.directions compute --gradient_at ALIGNED_DIR --pairs spare.csv --normalization layer --out dw/
# cosine / norm table between saved directions, with a random null for the first one
python -m landscape.directions table d_aligned/ d_harm/ --by module --null 20
# the AsFT paper's Table 1 on the model organism: cos(d_aligned, d_harm-N), N = 10..500, beside the null
python -m landscape.directions table1 --preset small
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

NORMALIZATIONS = ("none", "model", "layer", "filter")
GROUPINGS = ("model", "tensor", "layer", "module")


@dataclass
class ComputeArgs:
    """``compute``: one direction from two checkpoints, a LoRA adapter, or a seed; saved as safetensors."""

    out: str = field(metadata={"help": "output directory (must not exist, or be empty)"})
    start: str | None = field(default=None, metadata={"help": "checkpoint at alpha = 0 (e.g. the base model)"})
    end: str | None = field(default=None, metadata={"help": "checkpoint at alpha = 1 (e.g. the aligned model)"})
    kind: str = field(
        default="difference",
        metadata={"help": "label of a checkpoint pair", "choices": ("difference", "interpolation")},
    )
    adapter: str | None = field(default=None, metadata={"help": "PEFT LoRA adapter directory"})
    base: str | None = field(default=None, metadata={"help": "base checkpoint of the adapter (checked against it)"})
    random_like: str | None = field(
        default=None, metadata={"help": "checkpoint whose shapes a seeded Gaussian direction takes"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the random direction"})
    gradient_at: str | None = field(
        default=None,
        metadata={"help": "checkpoint where a worst-case direction (−∇ of the compliance loss of --pairs) is taken"},
    )
    pairs: str | None = field(
        default=None,
        metadata={"help": "(prompt, target) pairs for --gradient_at: CSV goal,target (AdvBench) or JSON / JSONL"},
    )
    limit: int | None = field(default=None, metadata={"help": "with --pairs: the first N pairs"})
    batch_size: int = field(default=8, metadata={"help": "with --gradient_at: pairs per forward/backward pass"})
    device: str = field(default="cpu", metadata={"help": "with --gradient_at: where the gradient is computed"})
    normalization: str = field(
        default="none", metadata={"help": "scale relative to --reference", "choices": NORMALIZATIONS}
    )
    reference: str | None = field(
        default=None, metadata={"help": "weights the normalisation is relative to (default: start / base)"}
    )
    blacklist: list[str] | None = field(
        default=None, metadata={"help": "regexes of tensors to zero ('1d' for every 1-D tensor)"}
    )
    name: str | None = field(default=None, metadata={"help": "label, e.g. d_aligned"})

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.end, self.adapter, self.random_like, self.gradient_at)]
        if sum(given) != 1:
            raise ValueError("compute: give exactly one of --start/--end, --adapter, --random_like, --gradient_at")
        if (self.gradient_at is None) != (self.pairs is None):
            raise ValueError("compute: --gradient_at and --pairs go together")
        if self.batch_size < 1:
            raise ValueError(f"compute: --batch_size must be >= 1, got {self.batch_size}")
        if self.end is not None and self.start is None:
            raise ValueError("compute: --end needs --start")
        if self.normalization != "none" and self.reference is None and self.adapter is not None and not self.base:
            raise ValueError("compute: --normalization needs --reference (or --base with --adapter)")
        if self.blacklist and self.normalization == "none":
            raise ValueError("compute: --blacklist applies with --normalization")
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"compute: --out {self.out!r} already exists and is not empty")


@dataclass
class TableArgs:
    """``table``: cosines and norms between saved directions, per group."""

    POSITIONAL: ClassVar[str] = "directions"  # `table d_aligned/ d_harm/ --by module`
    directions: list[str] = field(metadata={"help": "saved direction directories (at least two)"})
    by: str = field(default="model", metadata={"help": "group tensors by", "choices": GROUPINGS})
    null: int = field(default=0, metadata={"help": "K random directions for a null of the first direction"})
    reference: str | None = field(default=None, metadata={"help": "checkpoint for |d| / |theta|"})

    def __post_init__(self) -> None:
        if len(self.directions) < 2 and not self.null and not self.reference:
            raise ValueError("table: give at least two directions (or --null / --reference for one)")
        if self.null < 0:
            raise ValueError(f"table: --null must be >= 0, got {self.null}")


@dataclass
class Table1Args:
    """``table1``: the AsFT paper's Table 1 on the model organism."""

    preset: str = field(default="small", metadata={"help": "organism preset"})
    seed: int = field(default=0, metadata={"help": "organism seed"})
    null: int = field(default=20, metadata={"help": "K random directions in the null"})
    cache_dir: str | None = field(default=None, metadata={"help": "organism cache root"})


def compute(a: ComputeArgs) -> int:
    from . import difference, from_adapter, normalize, random_like, save_direction

    out = str(Path(a.out))  # "d_aligned/" and "d_aligned" are one directory
    raw_out = out if a.normalization == "none" else None
    if a.end is not None:
        d = difference(a.start, a.end, out=raw_out, name=a.name, kind=a.kind, progress=True)
        reference = a.reference or a.start
    elif a.adapter is not None:
        d = from_adapter(a.adapter, base=a.base, out=raw_out, name=a.name)
        reference = a.reference or a.base
    elif a.gradient_at is not None:
        from ..data import load_pairs
        from .gradient import gradient_direction

        pairs = load_pairs(a.pairs, limit=a.limit)
        d = gradient_direction(
            a.gradient_at, pairs, out=raw_out, name=a.name or "d_worst", batch_size=a.batch_size, device=a.device
        )
        reference = a.reference or a.gradient_at
    else:
        d = random_like(a.random_like, a.seed, name=a.name, out=raw_out)
        reference = a.reference or a.random_like
    if a.normalization != "none":
        d = normalize(d, reference, a.normalization, blacklist=a.blacklist or None, out=out)
    if d.store.origin != out:  # built in memory
        save_direction(d, out)
    from ..geometry import norm as total_norm

    if total_norm(d) == 0:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise ValueError(
            f"{out}: the direction is zero on every tensor (do --start and --end hold the same weights?); nothing "
            "written"
        )
    norm = d.meta.get("normalization", "none")
    print(f"wrote {out}: {d.name} ({d.kind}, normalisation {norm}, {len(d)} tensors, {d.numel():,} values)")
    return 0


def shared_checkpoint(x, y) -> bool | None:
    """Whether two directions were computed from a common checkpoint (a content hash both record): None when
    either records none (a random direction, an old file), so it cannot tell."""
    hx = {s["sha256"] for s in x.meta.get("sources", []) if s.get("sha256")}
    hy = {s["sha256"] for s in y.meta.get("sources", []) if s.get("sha256")}
    if not hx or not hy:
        return None
    return bool(hx & hy)


def table(a: TableArgs) -> int:
    from ..geometry import cosine_table, random_null, relative_norm
    from . import load_direction

    dirs = [load_direction(p) for p in a.directions]
    print(f"{'a':<16} {'b':<16} {'group':<14} {'cos':>10} {'|a|':>10} {'|b|':>10} {'a shared':>8} {'b shared':>8}")
    foreign = []
    for i, x in enumerate(dirs):
        for y in dirs[i + 1 :]:
            if shared_checkpoint(x, y) is False:
                foreign.append((x, y))
            for r in cosine_table(x, y, by=a.by):
                print(
                    f"{x.name:<16} {y.name:<16} {r.group:<14} {r.cos:10.3e} {r.norm_a:10.3e} {r.norm_b:10.3e} "
                    f"{r.shared_a:8.1%} {r.shared_b:8.1%}"
                )
    print("(a shared: the share of |a|^2 in tensors b also has; a tensor one side lacks counts as zero there)")
    for x, y in foreign:
        print(
            f"warning: {x.name} and {y.name} share no checkpoint (their sources' content hashes differ): they may "
            "belong to different models, and their cosine compares unrelated weights"
        )
    if a.reference:
        for d in dirs:
            print(f"|{d.name}| / |theta| = {relative_norm(d, a.reference):.3e}")
    if a.null:
        s = random_null(dirs[0], k=a.null, seed=1000).summary()
        print(
            f"random null for {dirs[0].name} (K={s['k']}): mean {s['mean']:.2e}, std {s['std']:.2e}, "
            f"|cos| mean {s['abs_mean']:.2e}, 95% [{s['q025']:.2e}, {s['q975']:.2e}]"
        )
    return 0


def table1(a: Table1Args) -> int:
    from ..organism import build_organism
    from ..organism.tables import table1 as organism_table1

    t = organism_table1(build_organism(a.preset, seed=a.seed, cache_dir=a.cache_dir, progress=False), k=a.null)
    print(
        f"Table 1 analogue on the organism ({a.preset}): cos(d_aligned, d_harm-N); |d_aligned|/|theta_base| = "
        f"{t.d_aligned_rel_norm:.3e}"
    )
    print(f"{'N':>5} {'cos':>11} {'|d_harm|/|theta|':>17} {'null |cos| <= this':>19}")
    for r in t.rows:
        print(f"{r.samples:>5} {r.cos:11.3e} {r.rel_norm:17.3e} {r.null_percentile:18.0f}%")
    s = t.null
    print(f"random null (K={s['k']}): mean {s['mean']:.2e}, std {s['std']:.2e}, |cos| mean {s['abs_mean']:.2e}")
    print(f"benign fine-tune: cos(d_aligned, d_benign) = {t.extra['benign_cos']:.3e}")
    return 0


COMMANDS = {
    "compute": (ComputeArgs, compute, "compute a direction and save it"),
    "table": (TableArgs, table, "cosine / norm table between saved directions"),
    "table1": (Table1Args, table1, "AsFT Table 1 on the organism"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m landscape.directions`` and the ``landscape-directions`` console script."""
    from ..cli import subcommands

    return subcommands(COMMANDS, "python -m landscape.directions", __doc__)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
