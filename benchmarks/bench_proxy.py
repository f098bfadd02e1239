"""What a proxy reading costs against a generation point: the head on every position, or only where it is read.

    python benchmarks/bench_proxy.py --preset smollm2-tiny     # the real-weights organism's aligned stage
    python benchmarks/bench_proxy.py --preset small            # the synthetic organism

On the aligned stage, 80 held-out harmful prompts: (a) a generation point (greedy, 32 new tokens, the batch of
the EPL search); (b) the EPL search's proxy reading (:func:`landscape.scores.greedy_kept` on the centre's 8-token
answers) with full-vocabulary logits at every position (the code before); (c) the same reading with the head
applied only at the answer positions (now). Interleaved, median of ``--repeats``; the proxy's verdicts compared.
Prints the table and writes ``benchmarks/results/proxy_<preset>.json`` (``proxy_over_generation`` before and
now, ``head_only_speedup``, ``same_verdicts``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smollm2-tiny")
    ap.add_argument("--cache_dir", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from landscape.backend import HFBackend
    from landscape.data import load_prompts
    from landscape.generation import GenerationSettings
    from landscape.io import atomic_write_json
    from landscape.loading import load_model
    from landscape.organism import build_organism
    from landscape.results import environment
    from landscape.scores import _teacher_forced, greedy_kept

    org = build_organism(a.preset, seed=0, cache_dir=a.cache_dir, progress=False)
    model, tok = load_model(org["aligned"])
    be = HFBackend(model, tok)
    prompts = load_prompts(org.eval_prompts_csv, limit=80)
    gen = GenerationSettings(max_new_tokens=32, batch_size=80)
    ids = be.encode(prompts, gen)
    answers = be.generate_ids(ids, GenerationSettings(max_new_tokens=8, batch_size=80))
    answers = [x or [tok.eos_token_id] for x in answers]

    def full_pass():
        seqs = [p + q for p, q in zip(ids, answers, strict=True)]
        starts = [len(p) for p in ids]
        out = _teacher_forced(model, seqs, starts, be.pad_id, 64)
        return [bool((lg.argmax(-1) == tgt).all()) for lg, tgt in out]

    times = {"generation": [], "proxy, head everywhere": [], "proxy, head where read": []}
    verdicts = {}
    for _ in range(a.repeats):
        for name in times:
            t0 = time.perf_counter()
            if name == "generation":
                be.generate_ids(ids, gen)
            elif name == "proxy, head everywhere":
                verdicts[name] = full_pass()
            else:
                verdicts[name] = greedy_kept(model, ids, answers, be.pad_id, 64)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    g = med["generation"]
    print(f"{'work':<26} {'seconds':>8} {'/ generation point':>19}")
    for k, v in med.items():
        print(f"{k:<26} {v:8.3f} {v / g:19.3f}")
    same = verdicts["proxy, head everywhere"] == verdicts["proxy, head where read"]
    out = {
        "preset": a.preset,
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "proxy_over_generation_before": round(med["proxy, head everywhere"] / g, 3),
        "proxy_over_generation_now": round(med["proxy, head where read"] / g, 3),
        "head_only_speedup": round(med["proxy, head everywhere"] / med["proxy, head where read"], 3),
        "same_verdicts": same,
        "env": environment("cpu", "torch.float32"),
        "threads": torch.get_num_threads(),
        "command": f"python benchmarks/bench_proxy.py --preset {a.preset}",
    }
    print(f"same verdicts: {same}; head where read is {out['head_only_speedup']}x faster")
    atomic_write_json(a.json or HERE / "results" / f"proxy_{a.preset}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
