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

import argparse
import os
from pathlib import Path


def parse_axis(text: str) -> list[float]:
    """``lo:hi:n`` (n evenly spaced points) or a comma-separated list."""
    from .scan import check_grid, linspace

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"axis {text!r}: expected lo:hi:n or a comma-separated list")
        return linspace(float(parts[0]), float(parts[1]), int(parts[2]))
    return check_grid([float(x) for x in text.split(",") if x.strip()], f"axis {text!r}")


def _directions(names: list[str], org, normalization: str):
    """Saved direction directories, or (on the organism) names that :meth:`Organism.direction` knows."""
    from .directions import load_direction

    out = []
    for n in names:
        if Path(n).exists():
            out.append(load_direction(n))
        elif org is None:
            raise ValueError(f"direction {n!r} is not a saved direction directory")
        else:
            out.append(org.direction(n, normalization))
    return out


def main(argv: list[str] | None = None) -> int:
    from .judges import JUDGES

    ap = argparse.ArgumentParser(
        prog="python -m landscape.scan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--aligned", help="model to perturb (default: the organism's aligned stage)")
    ap.add_argument("--direction", nargs="+", required=True, help="one (1D) or two (2D) directions")
    ap.add_argument(
        "--alphas", required=True, help="lo:hi:n or a list (write --alphas=-0.5:0.5:21 for a negative start)"
    )
    ap.add_argument("--betas", help="second axis (2D)")
    ap.add_argument("--normalization", default="layer", help="for organism directions computed on the fly")
    ap.add_argument("--prompts", help="harmful prompts file (default on the organism: its held-out set)")
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("--judge", default="keyword", choices=list(JUDGES))
    ap.add_argument("--judge-path")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--static-cache", action="store_true", help="HF generate on a static KV cache (compiled on CUDA)")
    ap.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is present, else cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--restart", action="store_true")
    ns = ap.parse_args(argv)

    import torch

    from .data import load_prompts
    from .generation import GenerationSettings, HFBackend
    from .judges import CachedJudge, make_judge
    from .loading import load_model
    from .scan import SafetyEvaluator, scan

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = ns.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        org = None
        if ns.aligned is None:
            from .organism import build_organism

            org = build_organism(ns.preset, cache_dir=ns.cache_dir, progress=False)
        aligned = ns.aligned or str(org["aligned"])
        prompts = load_prompts(ns.prompts or str(org.eval_prompts_csv), limit=ns.limit)
        dirs = _directions(ns.direction, org, ns.normalization)
        if len(dirs) not in (1, 2) or (len(dirs) == 2) != (ns.betas is not None):
            raise ValueError("give one direction with --alphas, or two with --alphas and --betas")
        alphas = parse_axis(ns.alphas)
        coords = [(a,) for a in alphas] if len(dirs) == 1 else [(a, b) for a in alphas for b in parse_axis(ns.betas)]
        jkw = {"path": ns.judge_path, "device": device} if ns.judge in ("guard", "classifier") else {}
        model, tok = load_model(aligned, dtype=ns.dtype, device=device)
        ev = SafetyEvaluator(
            HFBackend(model, tok),
            prompts,
            CachedJudge(make_judge(ns.judge, **jkw)),
            GenerationSettings(
                max_new_tokens=ns.max_new_tokens, batch_size=ns.batch_size, static_cache=ns.static_cache
            ),
        )
        series = " x ".join(d.name for d in dirs)
        res = scan(
            model,
            dirs,
            coords,
            ev,
            out_dir=ns.out,
            series=series,
            restart=ns.restart,
            progress=rank == 0,
            rank=rank,
            world_size=world,
        )
        if rank == 0:
            asr = res.metric("asr")
            print(
                f"{series}: {len(res.records)} of {len(coords)} points in {ns.out} ({res.evaluated} computed here, "
                f"{world} rank(s)); ASR min {asr.min():.1f}% max {asr.max():.1f}%"
            )
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0
