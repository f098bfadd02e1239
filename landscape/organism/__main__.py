"""Build (or reuse) the model organism and print what each stage does.

    python -m landscape.organism --preset small --out ~/organism

Without ``--out`` the checkpoints go to the cache (``$SAFETY_LANDSCAPE_CACHE`` or
``~/.cache/safety-landscape``); a second run reuses them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PRESET_NAMES = ("tiny", "small", "medium")


@dataclass
class OrganismArgs:
    """Arguments of ``python -m landscape.organism``."""

    preset: str = field(default="small", metadata={"help": "model size and schedule", "choices": PRESET_NAMES})
    seed: int = field(default=0, metadata={"help": "training seed (same seed, identical checkpoints)"})
    out: str | None = field(default=None, metadata={"help": "cache root to build into (default: the user cache)"})


@dataclass
class OrganismResult:
    organism: object
    behaviour: dict
    seconds: float


def run(args: OrganismArgs) -> OrganismResult:
    """Build the organism and measure every stage."""
    from .build import build_organism
    from .evaluate import measure_stage

    t0 = time.perf_counter()
    org = build_organism(args.preset, seed=args.seed, cache_dir=args.out)
    behaviour = {name: measure_stage(path, seed=args.seed) for name, path in org.stages.items()}
    return OrganismResult(org, behaviour, time.perf_counter() - t0)


def _print(res: OrganismResult) -> None:
    org, behaviour = res.organism, res.behaviour
    print(f"organism {org.preset} seed {org.seed}: {org.root}  ({res.seconds:.1f} s)")
    print(f"{'stage':<12} {'ASR %':>6} {'refuse %':>8} {'babble %':>8} {'task acc %':>10}  path")
    for name, b in behaviour.items():
        print(f"{name:<12} {b.asr:6.1f} {b.refusal:8.1f} {b.incoherent:8.1f} {b.task_accuracy:10.1f}  {org[name]}")
    print(f"held-out harmful prompts: {org.eval_prompts_csv} ({next(iter(behaviour.values())).n_prompts})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m landscape.organism`` and the ``landscape-organism`` console script."""
    from ..cli import command

    return command([OrganismArgs], run, "python -m landscape.organism", __doc__, report=_print)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
