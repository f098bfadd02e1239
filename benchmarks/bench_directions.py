"""Streamed checkpoint difference + cosine vs the naive way, on a synthetic sharded Llama-shaped pair.

    python benchmarks/bench_directions.py --size-gb 1.1

Builds two sharded fp32 safetensors checkpoints (random Llama-shaped tensors, the second a small
perturbation of the first), then runs each method in its own subprocess and reports wall time and
peak RSS (VmHWM):

- read:    read every tensor of both checkpoints once (the floor);
- naive:   load both state dicts, subtract, concatenate, cosine (what the reference code does);
- lazy:    ``cosine(difference(a, b, lazy=True), a)``: streamed, nothing stored;
- persist: ``difference(a, b, out=DIR)`` (with content hashes of both checkpoints), then the cosine
           from the saved direction.

Prints a table and writes JSON (``--json``). Ratios, not seconds, are what carry between machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from landscape.io import atomic_write_json

METHODS = {
    "read": """
from landscape.tensors import open_store
for p in (A, B):
    s = open_store(p)
    for n in s.keys():
        s.get(n)  # a fresh copy of the tensor's bytes, as every method makes
result = None
""",
    "naive": """
import torch
from safetensors.torch import load_file
from pathlib import Path
def load(p):
    sd = {}
    for f in sorted(Path(p).glob('*.safetensors')):
        sd.update(load_file(f))
    return sd
a, b = load(A), load(B)
d = {k: b[k] - a[k] for k in a}
vd = torch.cat([d[k].reshape(-1) for k in sorted(d)])
va = torch.cat([a[k].reshape(-1) for k in sorted(d)])
result = float(torch.dot(vd.double(), va.double()) / (vd.double().norm() * va.double().norm()))
""",
    "lazy": """
from landscape.directions import difference
from landscape.geometry import cosine
result = cosine(difference(A, B, lazy=True), A)
""",
    "persist": """
import shutil
from landscape.directions import difference, load_direction
from landscape.geometry import cosine
shutil.rmtree(OUT, ignore_errors=True)
difference(A, B, out=OUT)
result = cosine(load_direction(OUT), A)
""",
}

RUNNER = """
import json, time, torch
torch.set_num_threads({threads})
A, B, OUT = {a!r}, {b!r}, {out!r}
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({{"seconds": dt, "peak_rss_mb": int(hwm) / 1024, "result": result}}))
"""


def make_checkpoint_pair(root: Path, size_gb: float, hidden: int = 2048, inter: int = 5504, vocab: int = 32000):
    """Two sharded checkpoints of about ``size_gb`` each; B = A + 1e-3·N(0, 1)."""
    import torch
    from safetensors.torch import save_file

    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, round((size_gb * 1e9 / 4 - fixed) / per_layer))
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "lm_head.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q", "k", "v", "o"):
            shapes[p + f"self_attn.{m}_proj.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
    shard, shard_bytes, k, weight_map = {}, 0, 1, {}
    shard_b = {}

    def flush():
        nonlocal shard, shard_b, shard_bytes, k
        fname = f"model-{k:05d}.safetensors"
        save_file(shard, root / "a" / fname)
        save_file(shard_b, root / "b" / fname)
        weight_map.update({n: fname for n in shard})
        shard, shard_b, shard_bytes, k = {}, {}, 0, k + 1

    for n, shp in shapes.items():
        t = torch.randn(shp, generator=g) * 0.02
        shard[n] = t
        shard_b[n] = t + 1e-3 * torch.randn(shp, generator=g)
        shard_bytes += t.numel() * 4
        if shard_bytes > 500e6:
            flush()
    if shard:
        flush()
    total = sum(int(torch.tensor(s).prod()) for s in shapes.values()) * 4
    for name in ("a", "b"):
        idx = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / name / "model.safetensors.index.json").write_text(json.dumps(idx))
    return total


def run_method(method: str, a: Path, b: Path, out: Path, threads: int) -> dict:
    code = RUNNER.format(threads=threads, a=str(a), b=str(b), out=str(out), body=METHODS[method])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.1, help="size of EACH checkpoint (the pair is twice this)")
    ap.add_argument("--work", default="benchmarks/out/directions", help="where the synthetic checkpoints go")
    ap.add_argument("--repeats", type=int, default=2, help="runs per method (the fastest is kept)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default="benchmarks/results/directions.json")
    ns = ap.parse_args(argv)
    work = Path(ns.work)
    a, b, out = work / "a", work / "b", work / "d_out"
    if not (a / "model.safetensors.index.json").is_file():
        t0 = time.perf_counter()
        total = make_checkpoint_pair(work, ns.size_gb)
        print(f"built pair: 2 x {total / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
    total = json.loads((a / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    run_method("read", a, b, out, ns.threads)  # warm the page cache: every method then reads from memory
    results = {}
    for m in METHODS:
        runs = [run_method(m, a, b, out, ns.threads) for _ in range(ns.repeats)]
        results[m] = min(runs, key=lambda r: r["seconds"])
    floor, naive = results["read"], results["naive"]
    print(f"checkpoint pair: 2 x {total / 1e9:.2f} GB fp32, {ns.threads} threads")
    print(f"{'method':<8} {'seconds':>8} {'x read':>7} {'peak RSS MB':>12} {'x naive RSS':>12} {'cosine':>12}")
    for m, r in results.items():
        cos = "" if r["result"] is None else f"{r['result']:.9f}"
        print(
            f"{m:<8} {r['seconds']:8.2f} {r['seconds'] / floor['seconds']:7.2f} {r['peak_rss_mb']:12.0f} "
            f"{r['peak_rss_mb'] / naive['peak_rss_mb']:12.3f} {cos:>12}"
        )
    agree = all(abs(results[m]["result"] - naive["result"]) < 1e-6 for m in ("lazy", "persist"))
    print(f"cosines agree with naive to 1e-6: {agree}")
    report = {
        "checkpoint_bytes": total,
        "threads": ns.threads,
        "results": results,
        "cosines_agree": agree,
        "date": time.strftime("%Y-%m-%d"),
        "machine": os.uname().machine,
    }
    atomic_write_json(ns.json, report)
    return report


if __name__ == "__main__":
    main()
