"""``python -m landscape.scan``: a 1D or 2D landscape scan, on one process or spread over torchrun ranks.

    python -m landscape.scan --direction d_harm --alphas=-0.1:0.1:21 --out runs/scan     # organism, 1 process
    torchrun --standalone --nproc_per_node 4 -m landscape.scan --aligned /models/llama2-chat \\
        --direction d_aligned/ d_harm/ --alphas=-0.5:0.5:21 --betas=-0.05:0.05:21 \\
        --prompts harmful_behaviors.csv --device cuda --dtype bf16 --out runs/llama2-2d
    # several nodes: torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT ...

Grid points (not prompts) are spread over the ranks; each rank appends its points to its own file in
``--out`` and the files are merged on read, so the result equals a one-process run. A rank that dies loses
only the point it was computing: run the same command again and the remaining points are done.

Directions: saved direction directories, or, on the organism (no ``--aligned``), the names ``d_aligned``,
``d_harm`` and ``random-N``, computed and layer-normalised on the fly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..epl import JUDGE_NAMES, NORMALIZATION_NAMES


@dataclass
class ScanArgs:
    """Arguments of ``python -m landscape.scan``."""

    direction: list[str] = field(metadata={"help": "one (1D) or two (2D) directions: saved directories or names"})
    alphas: str = field(
        metadata={"help": "first axis: lo:hi:n or a comma list (write --alphas=-0.5:0.5:21 for a negative start)"}
    )
    out: str = field(metadata={"help": "results directory (a rerun resumes from it)"})
    betas: str | None = field(default=None, metadata={"help": "second axis (2D), as --alphas"})
    aligned: str | None = field(default=None, metadata={"help": "model to perturb (default: the organism's aligned)"})
    normalization: str = field(
        default="layer",
        metadata={"help": "for organism directions computed on the fly", "choices": NORMALIZATION_NAMES},
    )
    prompts: str | None = field(default=None, metadata={"help": "harmful prompts file (organism: its held-out set)"})
    limit: int | None = field(default=80, metadata={"help": "use the first N prompts"})
    judge: str = field(default="keyword", metadata={"help": "who decides an answer is unsafe", "choices": JUDGE_NAMES})
    judge_path: str | None = field(default=None, metadata={"help": "local model directory of a guard / classifier"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per answer"})
    batch_size: int | None = field(default=None, metadata={"help": "prompts per batch (default: all at once)"})
    static_cache: bool = field(default=False, metadata={"help": "HF generate on a static KV cache (compiled on CUDA)"})
    device: str | None = field(default=None, metadata={"help": "default: cuda:LOCAL_RANK with CUDA, else cpu"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bf16, fp16 or auto"})
    preset: str = field(default="small", metadata={"help": "organism preset when no --aligned is given"})
    cache_dir: str | None = field(default=None, metadata={"help": "organism cache root"})
    restart: bool = field(default=False, metadata={"help": "discard the results in --out and start over"})
    html: bool = field(default=True, metadata={"help": "write scan.html (plotly) beside scan.png"})
    judge_after: bool = field(
        default=False,
        metadata={"help": "generate at every point first, then judge all points in one batched pass (model judges)"},
    )
    allow_foreign_direction: bool = field(
        default=False,
        metadata={"help": "apply directions computed from other checkpoints than --aligned (recorded in run.json)"},
    )

    def __post_init__(self) -> None:
        if len(self.direction) not in (1, 2) or (len(self.direction) == 2) != (self.betas is not None):
            raise ValueError("give one --direction with --alphas, or two with --alphas and --betas")
        if self.judge not in JUDGE_NAMES:
            raise ValueError(f"Unknown judge {self.judge!r}. Available: {', '.join(JUDGE_NAMES)}")
        if self.judge in ("guard", "classifier") and not self.judge_path:
            raise ValueError(f"judge {self.judge!r} needs --judge_path (a local model directory)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        self.grid()
        from ..loading import resolve_dtype

        resolve_dtype(self.dtype)

    def grid(self) -> list[tuple[float, ...]]:
        alphas = parse_axis(self.alphas, "--alphas")
        if self.betas is None:
            return [(a,) for a in alphas]
        return [(a, b) for a in alphas for b in parse_axis(self.betas, "--betas")]


def parse_axis(text: str, flag: str = "axis") -> list[float]:
    """``lo:hi:n`` (n evenly spaced points) or a comma-separated list; errors name ``flag``."""
    from . import linspace

    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError("expected lo:hi:n or a comma-separated list")
            return linspace(float(parts[0]), float(parts[1]), int(parts[2]))
        vals = [float(x) for x in text.split(",") if x.strip()]
        if not vals or any(v != v or v in (float("inf"), float("-inf")) for v in vals):
            raise ValueError("needs finite numbers")
        return vals
    except ValueError as e:
        raise ValueError(f"{flag} {text!r}: {e}") from None


def _directions(names: list[str], org, normalization: str):
    """Saved direction directories, or (on the organism) names that :meth:`Organism.direction` knows."""
    from ..directions import load_direction

    out = []
    for n in names:
        if Path(n).exists():
            out.append(load_direction(n))
        elif org is None:
            raise ValueError(f"--direction {n!r} is not a saved direction directory")
        else:
            out.append(org.direction(n, normalization))
    return out


def run(args: ScanArgs):
    """Run the scan (this process's share under torchrun) and write ``scan.png`` / ``scan.html`` on rank 0."""
    import torch

    from ..data import load_prompts
    from ..generation import GenerationSettings, HFBackend
    from ..judges import CachedJudge, make_judge
    from ..loading import check_device, load_model
    from . import SafetyEvaluator, process_group, scan

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    check_device(device)
    coords = args.grid()
    org = None
    if args.aligned is None:
        from ..organism import build_organism

        org = build_organism(args.preset, cache_dir=args.cache_dir, progress=False)
    aligned = args.aligned or str(org["aligned"])
    if args.prompts is None and org is None:
        raise ValueError("--prompts is required with --aligned")
    prompts = load_prompts(args.prompts or str(org.eval_prompts_csv), limit=args.limit)
    dirs = _directions(args.direction, org, args.normalization)
    from ..provenance import check_source

    foreign = {d.name: note for d in dirs if (note := check_source(d, aligned, args.allow_foreign_direction))}
    jkw = {"path": args.judge_path, "device": device} if args.judge in ("guard", "classifier") else {}
    judge = CachedJudge(make_judge(args.judge, **jkw))
    model, tok = load_model(aligned, dtype=args.dtype, device=device)
    ev = SafetyEvaluator(
        HFBackend(model, tok),
        prompts,
        judge,
        GenerationSettings(
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, static_cache=args.static_cache
        ),
        defer_judging=args.judge_after,
    )
    with process_group(world, device):
        res = scan(
            model,
            dirs,
            coords,
            ev,
            out_dir=args.out,
            series=" x ".join(d.name for d in dirs),
            meta={"foreign_directions": foreign},
            restart=args.restart,
            progress=rank == 0,
            rank=rank,
            world_size=world,
        )
    res.extra.update(rank=rank, world_size=world, total=len(coords), out=args.out, names=[d.name for d in dirs])
    if rank == 0 and args.judge_after:
        import json

        from ..results import RUN_FILE, ResultsStore
        from . import judge_pending

        with ResultsStore(args.out, json.loads((Path(args.out) / RUN_FILE).read_text())) as store:
            judge_pending(res, ev, store)
    if rank == 0:
        res.extra["pictures"] = write_pictures(res, Path(args.out), args.html)
    return res


def write_pictures(res, out: Path, html: bool) -> list[Path]:
    """``scan.png`` (matplotlib) and ``scan.html`` (plotly, self-contained) of a 1D or 2D scan."""
    from ..io import atomic_savefig, atomic_write_text
    from ..plotting import curve_from_records, grid_from_records, plot_1d, plot_2d, plotly_1d, plotly_2d

    names = res.extra["names"]
    if len(names) == 1:
        curve = curve_from_records(names[0], res.records)
        fig = plot_1d([curve], threshold=50.0, title=f"ASR along {names[0]}")
        interactive = plotly_1d([curve], 50.0)
    else:
        a, b, z = grid_from_records(res.records)
        fig = plot_2d(a, b, z, names[0], names[1], 50.0, title=f"ASR over {names[0]} x {names[1]}")
        interactive = plotly_2d(a, b, z, names[0], names[1], None, 50.0)
    paths = [atomic_savefig(fig, out / "scan.png")]
    if html:
        paths.append(atomic_write_text(out / "scan.html", interactive.to_html(include_plotlyjs=True, full_html=True)))
    return paths


def _print(res) -> None:
    if res.extra["rank"] != 0:
        return
    asr = res.metric("asr")
    print(
        f"{res.series}: {len(res.records)} of {res.extra['total']} points in {res.extra['out']} ({res.evaluated} "
        f"computed here, {res.extra['world_size']} rank(s)); ASR min {asr.min():.1f}% max {asr.max():.1f}%"
    )
    print("wrote " + ", ".join(str(p) for p in res.extra["pictures"]))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m landscape.scan`` and the ``landscape-scan`` console script."""
    from ..cli import command

    return command([ScanArgs], run, "python -m landscape.scan", __doc__, report=_print)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
