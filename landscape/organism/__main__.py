"""Build (or reuse) the model organism and print what each stage does.

    python -m landscape.organism --preset small --out ~/organism

Without ``--out`` the checkpoints go to the cache (``$SAFETY_LANDSCAPE_CACHE`` or
``~/.cache/safety-landscape``); a second run reuses them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..io import read_json

PRESET_NAMES = ("tiny", "small", "medium", "smollm2", "smollm2-tiny")  # the last two: real weights


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
    """Build the organism and measure every stage (the real-weights one measures itself while it builds)."""
    from .build import build_organism
    from .evaluate import measure_stage
    from .real import REAL_PRESETS, STAGES_FILE

    t0 = time.perf_counter()
    org = build_organism(args.preset, seed=args.seed, cache_dir=args.out)
    if args.preset in REAL_PRESETS:
        behaviour = read_json(org.root / STAGES_FILE)
    else:
        behaviour = {name: measure_stage(path, seed=args.seed) for name, path in org.stages.items()}
    return OrganismResult(org, behaviour, time.perf_counter() - t0)


def _print(res: OrganismResult) -> None:
    org, behaviour = res.organism, res.behaviour
    print(f"organism {org.preset} seed {org.seed}: {org.root}  ({res.seconds:.1f} s)")
    if "stages" in behaviour:  # real weights: keyword ASR, over-refusal, task accuracy (Wilson 95 %)
        print(f"{'stage':<12} {'ASR %':>20} {'over-refusal %':>20} {'task acc %':>10}  path")
        for name, b in behaviour["stages"].items():
            asr = f"{b['asr']:.1f} [{b['asr_ci'][0]:.1f}, {b['asr_ci'][1]:.1f}]"
            over = f"{b['over_refusal']:.1f} [{b['over_refusal_ci'][0]:.1f}, {b['over_refusal_ci'][1]:.1f}]"
            print(f"{name:<12} {asr:>20} {over:>20} {b['task_accuracy']:10.1f}  {org[name]}")
        print(f"built in {behaviour.get('build_seconds', 0):.0f} s; held-out AdvBench: {org.eval_prompts_csv}")
        return
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
