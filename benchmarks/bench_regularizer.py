"""AsFT regulariser: our form vs the released code's formula, and its share of a LoRA training step.

    python benchmarks/bench_regularizer.py

(1) Forward + backward of ‖(I − Ĉ)·B·A‖²_F per module at shapes (d_out, d_in) = (4096, 4096) and
    (11008, 4096), r = 8, fp32 on the CPU (and CUDA when present): ours (B̃ = B − V(VᵀB)/‖V‖_F, r × r
    products) against the naive formula of the released code (materialise I − Ĉ, multiply by B·A). Each
    (method, shape) runs in its own subprocess; peak memory is the rise of VmHWM over the inputs.
(2) Share of a whole LoRA training step (forward + backward + AdamW) taken by the regulariser: on the
    organism, and on a stack of two Llama-7B-shaped decoder layers (hidden 4096, MLP 11008, LoRA on
    q_proj/v_proj), ours against the naive formula.

Prints a table; writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from landscape.io import atomic_write_json

ONE = """
import json, time, torch
torch.manual_seed(0)
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024
from asft.regularizer import make_module_anchor, lora_penalty, naive_lora_penalty
d_out, d_in, r, method, dev = {d_out}, {d_in}, 8, {method!r}, {dev!r}
V = torch.randn(d_out, d_in, device=dev) * 0.01
a = make_module_anchor('m', V, k=None)
B = (torch.randn(d_out, r, device=dev) * 0.01).requires_grad_()
A = (torch.randn(r, d_in, device=dev) * 0.01).requires_grad_()
fn = lora_penalty if method == 'ours' else naive_lora_penalty
def step():
    B.grad = A.grad = None
    v = fn('reference', a, B, A)
    v.backward()
    if dev == 'cuda':
        torch.cuda.synchronize()
    return float(v.detach())
if dev == 'cuda':
    torch.cuda.reset_peak_memory_stats()
base = hwm() if dev == 'cpu' else torch.cuda.memory_allocated() / 2**20  # inputs allocated, nothing computed yet
step()
times = []
for _ in range({reps}):
    t = time.perf_counter(); val = step(); times.append(time.perf_counter() - t)
peak = (hwm() if dev == 'cpu' else torch.cuda.max_memory_allocated() / 2**20) - base
print(json.dumps({{"seconds": min(times), "peak_mb": peak, "value": val}}))
"""


def module_bench(d_out: int, d_in: int, method: str, dev: str, reps: int) -> dict:
    code = ONE.format(d_out=d_out, d_in=d_in, method=method, dev=dev, reps=reps)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def step_share(model, batch, anchor_terms, reps: int = 3) -> dict:
    """A training step's seconds without the regulariser, and the regulariser's own forward + backward
    (ours and naive) timed separately over many repetitions: share = reg / (step + reg). Differencing two
    noisy step timings instead gives shares that swing by several points on a shared machine."""
    import torch

    from asft.regularizer import lora_penalty, naive_lora_penalty

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    def reg(fn):
        total = None
        for a, mod in anchor_terms:
            term = fn("reference", a, mod.lora_B["default"].weight, mod.lora_A["default"].weight)
            total = term if total is None else total + term
        total.backward()

    def best(f, n):
        f()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    out = {"plain": best(step, reps)}
    out["reg_ours"] = best(lambda: reg(lora_penalty), 20)
    out["reg_naive"] = best(lambda: reg(naive_lora_penalty), 3)
    out["share_ours"] = out["reg_ours"] / (out["plain"] + out["reg_ours"])
    out["share_naive"] = out["reg_naive"] / (out["plain"] + out["reg_naive"])
    return out


def _lora_model(model, anchors_from):
    from peft import LoraConfig, get_peft_model

    from asft.regularizer import make_module_anchor

    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    terms = []
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            W = mod.base_layer.weight
            terms.append((make_module_anchor(name, anchors_from(W), k=None), mod))
            import torch

            with torch.no_grad():
                mod.lora_B["default"].weight.normal_(0, 0.01)
    return pm, terms


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-naive-large", action="store_true", help="skip the naive formula at (11008, 4096)")
    ap.add_argument("--skip-stack", action="store_true", help="skip the 7B-shaped layer stack")
    ap.add_argument("--json", default="benchmarks/results/regularizer.json")
    ns = ap.parse_args(argv)
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: dict = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "modules": [], "steps": {}}
    print(f"(1) one module, r = 8, fp32, forward + backward, {report['threads']} CPU threads")
    print(
        f"{'device':<6} {'shape':<14} {'naive s':>9} {'ours s':>9} {'speedup':>8} {'naive MB':>9} {'ours MB':>8} agree"
    )
    for dev in devs:
        for shape in ((4096, 4096), (11008, 4096)):
            ours = module_bench(*shape, "ours", dev, ns.reps)
            if shape[0] > 4096 and ns.skip_naive_large and dev == "cpu":
                naive = None
            else:
                naive = module_bench(*shape, "naive", dev, 1 if dev == "cpu" and shape[0] > 4096 else ns.reps)
            row = {"device": dev, "shape": shape, "ours": ours, "naive": naive}
            if naive:
                row["speedup"] = naive["seconds"] / ours["seconds"]
                row["agree_rel"] = abs(naive["value"] - ours["value"]) / abs(naive["value"])
            report["modules"].append(row)
            ns_ = f"{naive['seconds']:9.3f}" if naive else f"{'-':>9}"
            nm = f"{naive['peak_mb']:9.0f}" if naive else f"{'-':>9}"
            sp = f"{row['speedup']:7.0f}x" if naive else f"{'-':>8}"
            ag = f"{row['agree_rel']:.1e}" if naive else "-"
            print(f"{dev:<6} {str(shape):<14} {ns_} {ours['seconds']:9.4f} {sp} {nm} {ours['peak_mb']:8.0f} {ag}")

    from landscape.loading import load_model
    from landscape.organism import build_organism

    org = build_organism("small", progress=False)
    model = load_model(org["aligned"], with_tokenizer=False)
    ref = load_model(org["base"], with_tokenizer=False)
    base_w = {n: p.detach() for n, p in ref.named_parameters()}
    by_ptr = {p.data_ptr(): n for n, p in model.named_parameters()}
    pm, terms = _lora_model(model, lambda W: W.detach() - base_w[by_ptr[W.data_ptr()]])
    ids = torch.randint(4, 100, (8, 40))
    report["steps"]["organism"] = step_share(pm, {"input_ids": ids, "labels": ids}, terms, 30)
    if not ns.skip_stack:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=1024,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=2,
            num_attention_heads=32,
            num_key_value_heads=32,
        )
        big = LlamaForCausalLM(cfg)
        pm, terms = _lora_model(big, lambda W: torch.randn_like(W) * 0.01)
        for b, t in ((4, 64), (8, 128)):
            ids = torch.randint(0, 1024, (b, t))
            batch = {"input_ids": ids, "labels": ids}
            report["steps"][f"llama7b_2layers_{b}x{t}"] = step_share(pm, batch, terms, 4 if b == 4 else 2)
    print("(2) regulariser share of a LoRA training step (q_proj, v_proj; reference form)")
    print(f"{'model':<24} {'step s':>8} {'ours s':>8} {'share':>7} {'naive s':>9} {'share':>7}")
    for k, s in report["steps"].items():
        print(
            f"{k:<24} {s['plain']:8.3f} {s['reg_ours']:8.4f} {100 * s['share_ours']:6.1f}% {s['reg_naive']:9.3f} "
            f"{100 * s['share_naive']:6.1f}%"
        )
    atomic_write_json(ns.json, report)
    return report


if __name__ == "__main__":
    main()
