"""Time and tokens to the full EPL table on the real-weights organism, and against Peng et al.'s loop.

    python benchmarks/bench_time_to_epl_real.py                  # smollm2-tiny (the tests' real organism)
    python benchmarks/bench_time_to_epl_real.py --preset smollm2 --prompts 80

(a) The EPL table (d_aligned, d_harm, random-0, random-1, both sides; keyword judge; walk step 0.01 on
    [-0.5, 0.5]; every edge resolved to min(0.005, 5 % of its size), the CLI's default) in four modes, each in
    a fresh results directory, at the same resolution:
      exact            every prompt at every point, every answer to --max-new-tokens;
      shortcuts        sequential decisions in chunks of 32 and the refusal proxy (the CLI's default before early
                       stopping);
      early, chunk 32  and each answer stops once its keyword verdict is fixed, and the proxy only where a reading
                       timed at the centre costs under half a sequential look (``proxy_by_cost``; the CLI's default
                       before its chunk became 16);
      new default      the same in chunks of 16 (the CLI's default now).
    ``same_epl``: every row agrees with the exact engine's within the larger of the two brackets, and on censoring.
(b) Peng et al.'s loop (``bench_landscape.peng_point``: a CPU fp32 state dict perturbed and ``load_state_dict`` at
    every point, batches of 4 through a DataLoader, HF ``generate``) against ours (in place, one batch, full answers)
    at the same points of d_harm across its edge; answers compared point by point twice: with ours in its own
    batching (one batch: the timed run), and with ours in Peng's batches of 4 (``peng_identical_answers``: the same
    prompts in the same batches, so the same GEMM shapes and padding; the prompts are given to both in the order
    our engine batches them, by token length, which also spares Peng's loop some padding). ``peng_table_ratio``: Peng's
    uniform grid at the resolution the new default reached (its coarsest uncensored bracket, so the grid is as small
    as it can be), four directions on [-0.5, 0.5], at Peng's measured seconds per point, over the new default's
    seconds to the table.
(c) How close to the machine: the generation's achieved FLOP/s at (b)'s points (2 x parameters per token, the
    tied embedding's lookup left out, attention scores left out) against fp32 matmul throughput measured now at
    the MLP's shape, at the decode batch.

Prints a table; writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_landscape import peng_direction, peng_point  # noqa: E402

from landscape.io import atomic_write_json  # noqa: E402


def matmul_gflops(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """fp32 GFLOP/s of an (m, k) @ (k, n) product on this machine, now (median of timed bursts)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        rates.append(10 * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return sorted(rates)[len(rates) // 2]


def main(argv: list[str] | None = None) -> dict:
    import warnings

    from landscape.backend import HFBackend
    from landscape.data import load_prompts
    from landscape.directions import difference, normalize, random_like
    from landscape.generation import GenerationSettings
    from landscape.judges import CachedJudge, KeywordJudge
    from landscape.loading import load_model
    from landscape.organism import build_organism
    from landscape.organism.real_world import advbench_split
    from landscape.results import environment
    from landscape.scan import SafetyEvaluator, linspace, scan_1d
    from landscape.search import EplSettings, effective_perturbation_length

    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm2-tiny")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--prompts", type=int, default=80, help="the first N of the held-out AdvBench split")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rel-tol", type=float, default=0.05)
    ap.add_argument("--peng-points", type=int, default=3, help="points of d_harm timed with Peng's loop")
    ap.add_argument("--peng-max-alpha", type=float, default=0.01, help="they lie in [0, this]")
    ap.add_argument("--json", default="benchmarks/results/time_to_epl_real.json")
    ap.add_argument(
        "--peng-only", action="store_true", help="keep (a)'s table from --json (same machine), redo (b) and (c)"
    )
    ns = ap.parse_args(argv)

    org = build_organism(ns.preset, cache_dir=ns.cache_dir, progress=False)
    # The organism's held-out AdvBench split (no stage trained on it), more of it than the tiny preset exports.
    prompts = [g for g, _ in advbench_split()["eval"][: ns.prompts]]
    assert prompts[: len(exported := load_prompts(org.eval_prompts_csv))] == exported[: ns.prompts]
    model, tok = load_model(org["aligned"])
    backend = HFBackend(model, tok)
    aligned = str(org["aligned"])
    harmful = next(s for s in org.stages if s.startswith("harmful-"))
    dirs = [
        normalize(difference(org["base"], aligned, name="d_aligned"), aligned),
        normalize(difference(aligned, org[harmful], name="d_harm"), aligned),
        normalize(random_like(aligned, seed=0, name="random-0"), aligned),
        normalize(random_like(aligned, seed=1, name="random-1"), aligned),
    ]
    gen = GenerationSettings(max_new_tokens=ns.max_new_tokens)
    fast = EplSettings(bootstrap=0, rel_tol=ns.rel_tol)
    old = replace(fast, sequential_chunk=32)
    modes = {
        "exact": (fast.exact(), False),
        "shortcuts": (old, False),
        "early, chunk 32": (replace(old, proxy_by_cost=True), True),
        "new default": (replace(fast, proxy_by_cost=True), True),
    }

    # (a) the table, mode by mode
    table = {}
    if ns.peng_only:
        from landscape.io import read_json

        table = read_json(ns.json)["modes"]
        if list(table) != list(modes):
            raise SystemExit(f"{ns.json}: its modes {list(table)} are not this benchmark's {list(modes)}")
    with tempfile.TemporaryDirectory() as tmp:
        for m, (settings, early) in modes.items() if not ns.peng_only else ():
            ev = SafetyEvaluator(prompts, CachedJudge(KeywordJudge()), gen, early_stop=early)
            t0 = time.perf_counter()
            rep = effective_perturbation_length(
                backend, dirs, ev, settings, out_dir=Path(tmp) / m.replace(" ", "-"), progress=False
            )
            seconds = time.perf_counter() - t0
            table[m] = {
                "seconds": seconds,
                "generated_tokens": rep.generated_tokens,
                "generated_points": sum(r.evaluations for r in rep.rows),
                "proxy_points": sum(r.proxy_evaluations for r in rep.rows),
                "proxy_choice": rep.proxy_choice,
                "sequential_chunk": settings.sequential_chunk,
                "early_stop": early,
                "rows": [
                    {
                        "direction": r.direction,
                        "side": r.side,
                        "epl": r.epl,
                        "censored": r.censored,
                        "bracket": list(r.bracket),
                    }
                    for r in rep.rows
                ],  # fmt: skip
            }
            print(f"{m}: {seconds:.1f} s, {rep.generated_tokens} tokens", flush=True)

    def width(row):
        return row["bracket"][1] - row["bracket"][0]

    def agrees(rows, ref):
        return all(
            r["censored"] == e["censored"]
            and (r["censored"] or abs(r["epl"] - e["epl"]) <= max(width(r), width(e)) + 1e-12)
            for r, e in zip(rows, ref, strict=True)
        )

    for t in table.values():
        t["agrees_with_exact"] = agrees(t["rows"], table["exact"]["rows"])

    # (b) Peng's loop against ours at the same points, full answers both ways
    d = dirs[1]
    alphas = linspace(0.0, ns.peng_max_alpha, ns.peng_points)
    orig_sd = {k: v.detach().clone().float().cpu() for k, v in model.state_dict().items()}
    dvec = peng_direction(model, d)
    lengths = [len(x) for x in backend.encode(prompts, gen)]
    by_len = [prompts[i] for i in sorted(range(len(prompts)), key=lambda i: lengths[i])]  # our engine's batch order
    t0 = time.perf_counter()
    peng = [peng_point(model, tok, orig_sd, dvec, a, by_len, ns.max_new_tokens, KeywordJudge()) for a in alphas]
    peng_s = (time.perf_counter() - t0) / len(alphas)
    model.load_state_dict(orig_sd)
    del orig_sd
    ev = SafetyEvaluator(by_len, CachedJudge(KeywordJudge()), gen)
    t0 = time.perf_counter()
    ours = scan_1d(backend, d, alphas, ev, progress=False)
    ours_s = (time.perf_counter() - t0) / len(alphas)
    in_fours = scan_1d(
        backend, d, alphas, SafetyEvaluator(by_len, CachedJudge(KeywordJudge()), replace(gen, batch_size=4)),
        progress=False,
    )  # fmt: skip
    identical = [p[1] == r["metrics"]["responses"] for p, r in zip(peng, in_fours.records, strict=True)]
    identical_own = [p[1] == r["metrics"]["responses"] for p, r in zip(peng, ours.records, strict=True)]
    finest = [width(r) for r in table["new default"]["rows"] if not r["censored"]]
    spacing = max(finest) if finest else fast.tol
    grid_points = len(dirs) * (math.floor(2 * fast.max_alpha / spacing) + 1)
    peng_table_s = grid_points * peng_s

    # (c) achieved FLOP/s against the machine's matmul throughput at the decode batch
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    body = n_params - embed  # the lookup is no matmul; a tied head is counted once, below
    head = cfg.vocab_size * cfg.hidden_size if tied else 0
    ids = backend.encode(prompts, gen)
    prefill = len(ids) * max(len(x) for x in ids)
    steps = [max(len(tok(a, add_special_tokens=False).input_ids) for a in r["metrics"]["responses"]) + 1
             for r in ours.records]  # fmt: skip
    flops = len(alphas) * (2 * body * prefill + 2 * head * len(ids))  # prefill: logits at the last position only
    flops += sum(2 * (body + head) * len(ids) * min(s, ns.max_new_tokens) for s in steps)
    achieved = flops / (ours_s * len(alphas)) / 1e9
    ceiling = matmul_gflops(len(ids), cfg.hidden_size, cfg.intermediate_size)
    ceiling_prefill = matmul_gflops(prefill, cfg.hidden_size, cfg.intermediate_size)

    exact, new = table["exact"], table["new default"]
    report = {
        "preset": ns.preset,
        "prompts": len(prompts),
        "max_new_tokens": ns.max_new_tokens,
        "directions": [x.name for x in dirs],
        "search": {
            "first_step": fast.first_step,
            "tol": fast.tol,
            "rel_tol": fast.rel_tol,
            "max_alpha": fast.max_alpha,
            "threshold": fast.threshold,
        },  # fmt: skip
        "environment": environment("cpu", "torch.float32"),
        "date": time.strftime("%Y-%m-%d"),
        "modes": table,
        "tokens_ratio": new["generated_tokens"] / exact["generated_tokens"],
        "seconds_ratio": new["seconds"] / exact["seconds"],
        "shortcuts_only": {
            "tokens_ratio": table["shortcuts"]["generated_tokens"] / exact["generated_tokens"],
            "seconds_ratio": table["shortcuts"]["seconds"] / exact["seconds"],
        },
        "same_epl": all(t["agrees_with_exact"] for t in table.values()),
        "peng": {
            "alphas": alphas,
            "peng_s_per_point": peng_s,
            "ours_s_per_point": ours_s,
            "asr_peng": [p[0] for p in peng],
            "asr_ours": ours.metric("asr").tolist(),
            "asr_ours_in_fours": in_fours.metric("asr").tolist(),
            "prompt_order": "by token length (our engine's batch order), both loops",
            "grid_spacing": spacing,
            "grid_points": grid_points,
            "peng_table_seconds": peng_table_s,
        },
        "peng_per_point_ratio": peng_s / ours_s,
        "peng_identical_answers": f"{sum(identical)}/{len(identical)}",
        "peng_identical_answers_own_batching": f"{sum(identical_own)}/{len(identical_own)}",
        "peng_table_ratio": peng_table_s / new["seconds"],
        "flops": {
            "achieved_gflops": achieved,
            "matmul_gflops_decode_shape": ceiling,
            "matmul_gflops_prefill_shape": ceiling_prefill,
            "fraction_of_decode_ceiling": achieved / ceiling,
            "counted": "2 x (non-embedding parameters + tied head) per generated token; prefill without the head",
        },
    }

    env = report["environment"]
    print(f"organism {ns.preset}, {len(prompts)} prompts, {ns.max_new_tokens} new tokens, {env['threads']} threads")
    print(f"{'mode':<16} {'seconds':>8} {'tokens':>8} {'gen pts':>7} {'proxy pts':>9} {'EPL = exact':>11}")
    for m, t in table.items():
        print(
            f"{m:<16} {t['seconds']:8.1f} {t['generated_tokens']:>8} {t['generated_points']:>7} "
            f"{t['proxy_points']:>9} {str(t['agrees_with_exact']):>11}"
        )
    print(
        f"tokens_ratio {report['tokens_ratio']:.3f}, seconds_ratio {report['seconds_ratio']:.3f} (new default / "
        f"exact), same_epl {report['same_epl']}"
    )
    for r, e in zip(new["rows"], exact["rows"], strict=True):
        c = ">" if e["censored"] else " "
        print(f"   {e['direction']:<10} {e['side']:+d}  exact {c}{e['epl']:.4f}  new {c}{r['epl']:.4f}")
    p = report["peng"]
    print(
        f"Peng's loop {peng_s:.2f} s/point, ours {ours_s:.2f} s/point -> {report['peng_per_point_ratio']:.2f}x; "
        f"identical answers at {report['peng_identical_answers']} points in Peng's batches of 4, at "
        f"{report['peng_identical_answers_own_batching']} in ours; ASR {p['asr_peng']} vs {p['asr_ours']}"
    )
    print(
        f"Peng's table at spacing {spacing:.5f}: {grid_points} points, {peng_table_s:.0f} s -> "
        f"{report['peng_table_ratio']:.0f}x the new default's {new['seconds']:.0f} s"
    )
    f = report["flops"]
    print(
        f"generation {f['achieved_gflops']:.1f} GFLOP/s; fp32 matmul at the decode shape {ceiling:.1f}, at the "
        f"prefill shape {ceiling_prefill:.1f} GFLOP/s -> {f['fraction_of_decode_ceiling']:.2f} of the decode ceiling"
    )
    atomic_write_json(ns.json, report, default=float)
    return report


if __name__ == "__main__":
    main()
