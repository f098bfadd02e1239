"""Build (or reuse) the model organism and print what each stage does.

    python -m landscape.organism --preset small --out ~/organism

Without ``--out`` the checkpoints go to the cache (``$SAFETY_LANDSCAPE_CACHE`` or
``~/.cache/safety-landscape``); a second run reuses them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass


@dataclass
class OrganismArgs:
    preset: str = "small"
    seed: int = 0
    out: str | None = None


def run(args: OrganismArgs):
    """Build the organism and measure every stage; returns ``(organism, {stage: StageBehaviour})``."""
    from .build import build_organism
    from .evaluate import measure_stage

    org = build_organism(args.preset, seed=args.seed, cache_dir=args.out)
    return org, {name: measure_stage(path, seed=args.seed) for name, path in org.stages.items()}


def main(argv: list[str] | None = None) -> int:
    from .train import PRESETS

    ap = argparse.ArgumentParser(
        prog="python -m landscape.organism", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="small", choices=list(PRESETS), help="model size and schedule")
    ap.add_argument("--seed", type=int, default=0, help="training seed (same seed, identical checkpoints)")
    ap.add_argument("--out", default=None, help="cache root to build into (default: the user cache)")
    ns = ap.parse_args(argv)
    t0 = time.perf_counter()
    org, behaviour = run(OrganismArgs(preset=ns.preset, seed=ns.seed, out=ns.out))
    print(f"organism {org.preset} seed {org.seed}: {org.root}  ({time.perf_counter() - t0:.1f} s)")
    print(f"{'stage':<12} {'ASR %':>6} {'refuse %':>8} {'babble %':>8} {'task acc %':>10}  path")
    for name, b in behaviour.items():
        print(f"{name:<12} {b.asr:6.1f} {b.refusal:8.1f} {b.incoherent:8.1f} {b.task_accuracy:10.1f}  {org[name]}")
    print(f"held-out harmful prompts: {org.eval_prompts_csv} ({next(iter(behaviour.values())).n_prompts})")
    return 0


if __name__ == "__main__":
    from landscape.cli import guarded

    raise SystemExit(guarded(main))
