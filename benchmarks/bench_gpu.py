"""Seconds per grid point on a GPU: our engine vs a Peng-style loop vs the memory-bandwidth floor.

    python benchmarks/bench_gpu.py                        # Llama-2-7B-shaped, bf16, on cuda (one H200 here)
    python benchmarks/bench_gpu.py --config tiny --device cpu --points 1 --prompts 4 --new-tokens 4   # smoke test

A Llama-2-7B-*shaped* model with random weights (built from a config: nothing to download), 80 prompts of
random tokens, a fixed number of new tokens (EOS ignored), one layer-normalised random direction. Per
grid point:

- ours: in-place perturbation on the device (fp32 arithmetic, one cast) and all prompts in one batch
  through the HF backend (`model.generate` with the non-finite check);
- Peng-style: the perturbed state dict computed on the CPU in fp32, ``load_state_dict`` to the device,
  prompts in batches of 4 through HF ``generate``;
- floor: decode steps × model bytes / measured device copy bandwidth, plus the measured prefill of the
  80 prompts (each decode step must read every weight once).

Goals (issue 7): ours ≥ 100× the Peng-style loop and ≤ 1.5× the floor. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import time

import torch

from landscape.io import atomic_write_json

CONFIGS = {
    "llama2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    ),
}


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(dev: str, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy (read + write counted once, as a decode step reads weights)."""
    n = nbytes // 2
    a = torch.empty(n, dtype=torch.bfloat16, device=dev)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(dev)
    t = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    sync(dev)
    return 2 * a.numel() * a.element_size() * 5 / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from landscape.backend import HFBackend
    from landscape.directions import Direction
    from landscape.generation import GenerationSettings
    from landscape.tensors import MemoryStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="llama2-7b", choices=list(CONFIGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=80)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--points", type=int, default=3, help="grid points timed for our engine")
    ap.add_argument("--peng-points", type=int, default=1, help="grid points timed for the Peng-style loop")
    ap.add_argument("--json", default="benchmarks/results/gpu.json")
    ns = ap.parse_args(argv)
    dev, dtype = ns.device, getattr(torch, ns.dtype)
    torch.manual_seed(0)
    cfg = LlamaConfig(**CONFIGS[ns.config], pad_token_id=0, eos_token_id=2, bos_token_id=1)
    with torch.device(dev):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype).eval()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, cfg.vocab_size, (ns.prompt_len,), generator=g).tolist() for _ in range(ns.prompts)]
    with torch.no_grad():  # a layer-normalised random direction, made on the device
        tensors = {}
        for n, p in model.named_parameters():
            r = torch.randn(p.shape, device=dev, dtype=torch.float32)
            tensors[n] = r * (p.float().norm() / r.norm())
    d = Direction(MemoryStore(tensors), {"name": "random", "kind": "random"})

    class _Tok:  # the HF backend only needs these from a tokenizer
        eos_token_id, pad_token_id = 2, 0

    # fp32 directions on the device, as this benchmark has always measured (placement auto could pick host)
    backend = HFBackend(model, _Tok(), placement="device-fp32")
    settings = GenerationSettings(max_new_tokens=ns.new_tokens, ignore_eos=True)
    alphas = [0.001 * (i + 1) for i in range(ns.points)]
    with backend.attach([d]):
        backend.set_point((alphas[0],))
        backend.generate_ids(ids[:2], GenerationSettings(max_new_tokens=2, ignore_eos=True))  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        for a in alphas:
            backend.set_point((a,))
            out = backend.generate_ids(ids, settings)
        sync(dev)
        ours = (time.perf_counter() - t0) / len(alphas)
    assert all(len(o) == ns.new_tokens for o in out)

    # floor: prefill measured, decode = steps x bytes / bandwidth
    bw = copy_bandwidth(dev) if dev.startswith("cuda") else copy_bandwidth(dev, 1 << 28)
    x = torch.tensor(ids, device=dev)
    with torch.inference_mode():
        model(input_ids=x, logits_to_keep=1)
        sync(dev)
        t = time.perf_counter()
        model(input_ids=x, logits_to_keep=1)
        sync(dev)
        prefill = time.perf_counter() - t
    floor = prefill + ns.new_tokens * model_bytes / bw

    # Peng-style loop
    cpu_sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    cpu_d = {k: v.to("cpu") for k, v in tensors.items()}
    t0 = time.perf_counter()
    for a in alphas[: ns.peng_points]:
        new_sd = {k: (w + a * cpu_d[k] if k in cpu_d else w) for k, w in cpu_sd.items()}
        model.load_state_dict(new_sd)
        for i in range(0, len(ids), 4):
            batch = torch.tensor(ids[i : i + 4], device=dev)
            with torch.no_grad():
                model.generate(
                    input_ids=batch,
                    attention_mask=torch.ones_like(batch),
                    max_new_tokens=ns.new_tokens,
                    min_new_tokens=ns.new_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )
        sync(dev)
    peng = (time.perf_counter() - t0) / ns.peng_points
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
        "config": ns.config,
        "dtype": ns.dtype,
        "prompts": ns.prompts,
        "new_tokens": ns.new_tokens,
        "model_gb": model_bytes / 1e9,
        "bandwidth_gbs": bw / 1e9,
        "prefill_s": prefill,
        "ours_s_per_point": ours,
        "peng_s_per_point": peng,
        "floor_s_per_point": floor,
        "speedup_vs_peng": peng / ours,
        "ratio_to_floor": ours / floor,
    }
    print(
        f"{report['device']}, {ns.config} ({report['model_gb']:.2f} GB {ns.dtype}), {ns.prompts} prompts x "
        f"{ns.new_tokens} new tokens, copy bandwidth {report['bandwidth_gbs']:.0f} GB/s"
    )
    print(f"{'':<12} {'s/point':>9}")
    for k in ("peng", "ours", "floor"):
        print(f"{k:<12} {report[k + '_s_per_point']:9.3f}")
    print(
        f"ours vs Peng-style: {report['speedup_vs_peng']:.1f}x faster (goal >= 100x); "
        f"ours / floor = {report['ratio_to_floor']:.2f} (goal <= 1.5)"
    )
    atomic_write_json(ns.json, report)
    return report


if __name__ == "__main__":
    main()
