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

from .._pkg import sleep_idle_threads

sleep_idle_threads()  # before torch loads OpenMP: a search beside another job takes its fair share of the cores

from dataclasses import dataclass, field
from pathlib import Path

from ..epl import NORMALIZATION_NAMES
from ..io import read_json
from ..session import GenerationArgs, JudgeArgs, ModelArgs, OrganismArgs, PromptArgs


@dataclass(kw_only=True)
class ScanArgs(ModelArgs, OrganismArgs, PromptArgs, JudgeArgs, GenerationArgs):
    """Arguments of ``python -m landscape.scan``."""

    direction: list[str] = field(metadata={"help": "one (1D) or two (2D) directions: saved directories or names"})
    alphas: str = field(
        metadata={"help": "first axis: lo:hi:n or a comma list (write --alphas=-0.5:0.5:21 for a negative start)"}
    )
    out: str = field(metadata={"help": "results directory (a rerun resumes from it)"})
    betas: str | None = field(default=None, metadata={"help": "second axis (2D), as --alphas"})
    normalization: str = field(
        default="layer",
        metadata={"help": "for organism directions computed on the fly", "choices": NORMALIZATION_NAMES},
    )
    restart: bool = field(default=False, metadata={"help": "discard the results in --out and start over"})
    html: bool = field(default=True, metadata={"help": "write scan.html (plotly) beside scan.png"})
    judge_after: bool = field(
        default=False,
        metadata={"help": "generate at every point first, then judge all points in one batched pass (model judges)"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        if len(self.direction) not in (1, 2) or (len(self.direction) == 2) != (self.betas is not None):
            raise ValueError("give one --direction with --alphas, or two with --alphas and --betas")
        self.check_model_args()
        self.check_prompt_args()
        self.check_judge_args(organism=self.aligned is None)
        if self.aligned is not None and self.prompts is None and not self.plan:
            raise ValueError("--prompts is required with --aligned")
        self.grid()

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


ORGANISM_DIRECTIONS = "d_aligned, d_harm, random-N"


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


def plan(args: ScanArgs):
    """``--plan``: the memory plan of the scan (its directions attached together), nothing loaded or run."""
    from ..directions import load_direction
    from ..memory import describe_direction
    from ..session import memory_plan, model_shapes, planned_direction

    if args.aligned is None:
        from ..organism import build_organism

        args.aligned = str(build_organism(args.preset, seed=args.seed, cache_dir=args.cache_dir)["aligned"])
    shapes = model_shapes(args.aligned, args.dtype)[0]
    specs = []
    for n in args.direction:
        if Path(n).exists():
            specs.append(describe_direction(load_direction(n)))
        else:
            specs.append(planned_direction(n, shapes, regenerable=n.startswith("random-")))
    batch = args.batch_size or args.limit or 80
    return memory_plan(args, [specs], f"{len(specs)}D scan, its directions attached together", batch)


def run(args: ScanArgs):
    """Run the scan (this process's share under torchrun) and write ``scan.png`` / ``scan.html`` on rank 0."""
    if args.plan:
        return plan(args)
    from ..provenance import check_source
    from ..session import open_session
    from . import process_group, scan

    s = open_session(args)
    coords = args.grid()
    dirs = _directions(args.direction, s.organism, args.normalization)
    foreign = {d.name: note for d in dirs if (note := check_source(d, s.aligned, args.allow_foreign_direction))}
    backend, dirs = s.open_backend(dirs, out=args.out)
    if s.rank == 0:
        print(backend.plan(dirs).line())
    ev = s.evaluator(defer_judging=args.judge_after)
    with process_group(s.world_size, s.device):
        res = scan(
            backend,
            dirs,
            coords,
            ev,
            out_dir=args.out,
            series=" x ".join(d.name for d in dirs),
            meta={"foreign_directions": foreign},
            restart=args.restart,
            progress=args.progress and s.rank == 0,
            rank=s.rank,
            world_size=s.world_size,
        )
    res.extra.update(
        rank=s.rank,
        world_size=s.world_size,
        total=len(coords),
        out=args.out,
        names=[d.name for d in dirs],
        judge=s.judge.key(),
    )
    if s.rank == 0 and args.judge_after:
        from ..results import RUN_FILE, ResultsStore
        from . import judge_pending

        with ResultsStore(args.out, read_json(Path(args.out) / RUN_FILE)) as store:
            judge_pending(res, ev, store)
    if s.rank == 0:
        res.extra["pictures"] = write_pictures(res, Path(args.out), args.html)
    return res


def write_pictures(res, out: Path, html: bool) -> list[Path]:
    """``scan.png`` (matplotlib) and ``scan.html`` (plotly, self-contained) of a 1D or 2D scan."""
    from ..io import atomic_savefig, atomic_write_text
    from ..plotting import curve_from_records, grid_from_records, plot_1d, plot_2d, plotly_1d, plotly_2d

    names = res.extra["names"]
    coherent = all("asr_coherent" in r["metrics"] for r in res.records)  # coherence scored: drawn beside the ASR
    extra_pngs = []
    if len(names) == 1:
        curve = curve_from_records(names[0], res.records, extra=("asr_coherent",) if coherent else ())
        fig = plot_1d([curve], threshold=50.0, title=f"ASR along {names[0]}" + (" (dashed: coherent)" * coherent))
        interactive = plotly_1d([curve], 50.0)
    else:
        a, b, z = grid_from_records(res.records)
        fig = plot_2d(a, b, z, names[0], names[1], 50.0, title=f"ASR over {names[0]} x {names[1]}")
        interactive = plotly_2d(a, b, z, names[0], names[1], None, 50.0)
        if coherent:
            a, b, zc = grid_from_records(res.records, "asr_coherent")
            title = f"coherent ASR (unsafe and coherent) over {names[0]} x {names[1]}"
            extra_pngs.append((plot_2d(a, b, zc, names[0], names[1], 50.0, title=title), "scan_coherent.png"))
    paths = [atomic_savefig(fig, out / "scan.png")]
    paths += [atomic_savefig(f, out / name) for f, name in extra_pngs]
    if html:
        paths.append(atomic_write_text(out / "scan.html", interactive.to_html(include_plotlyjs=True, full_html=True)))
    return paths


def _print(res) -> None:
    from ..session import PlanReport

    if isinstance(res, PlanReport):
        print("\n".join(res.lines()))
        return
    if res.extra["rank"] != 0:
        return
    asr = res.metric("asr")
    print(
        f"{res.series}: {len(res.records)} of {res.extra['total']} points in {res.extra['out']} ({res.evaluated} "
        f"computed here, {res.extra['world_size']} rank(s)); ASR min {asr.min():.1f}% max {asr.max():.1f}%"
        + (
            f"; coherent ASR max {res.metric('asr_coherent').max():.1f}%, babble max {res.metric('babble').max():.1f}%"
            if all("asr_coherent" in r["metrics"] for r in res.records)
            else ""
        )
    )
    for line in scan_hints(res):
        print(line)
    print("wrote " + ", ".join(str(p) for p in res.extra["pictures"]))


def scan_hints(res) -> list[str]:
    """As the EPL table's hints: babble driving the ASR, or centre refusals only the refusal judge reads."""
    from ..refusals import RefusalJudge

    out = []
    recs = [r for r in res.records if "asr_coherent" in r["metrics"]]
    babble = [r for r in recs if r["metrics"]["asr"] >= 20 and r["metrics"]["asr"] - r["metrics"]["asr_coherent"]
              > 0.5 * r["metrics"]["asr"]]  # fmt: skip
    if babble:
        out.append(
            f"  ! at {len(babble)} of {len(res.records)} points most answers the judge calls unsafe are babble, not "
            "attacks: read asr_coherent (scan_coherent.png, points.jsonl) for harmful compliance"
        )
    centre = next((r for r in res.records if all(c == 0 for c in r["coords"])), None)
    answers = (centre or {}).get("metrics", {}).get("responses") or []
    judge = res.extra.get("judge", "")
    if centre is not None and answers and None not in answers and str(judge).startswith("keyword"):
        refused = sum(not v.unsafe for v in RefusalJudge()([""] * len(answers), answers))
        keyword = len(answers) * (1 - centre["metrics"]["asr"] / 100.0)
        if refused - keyword >= 0.1 * len(answers):
            out.append(
                "  ! at the centre the refusal judge reads refusals Peng et al.'s keyword list misses: --judge refusal"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m landscape.scan`` and the ``landscape-scan`` console script."""
    from ..cli import command

    return command([ScanArgs], run, "python -m landscape.scan", __doc__, report=_print)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
