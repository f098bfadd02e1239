"""Landscape engine vs a faithful re-implementation of Peng et al.'s loop, on the model organism.

    python benchmarks/bench_landscape.py

(a) seconds per grid point: Peng's loop (CPU fp32 state-dict copy perturbed on the CPU and
    ``load_state_dict`` per point; prompts through a DataLoader with batch size 4, 8 workers and pinned
    memory, rebuilt at every point; HF ``generate``; keyword judge) against ours (in-place perturbation,
    one batch, the HF backend, cached keyword judge). Same prompts, same max_new_tokens.
(b) time to EPL at resolution 0.005 on [−0.5, 0.5] for d_aligned, d_harm and one random direction:
    a uniform grid (201 points per direction) against the adaptive search. The uniform grid is run with
    our engine (measured) and its cost under Peng's loop is its point count × Peng's measured s/point.
(c) ASR identical at every grid point of (a), both ways (greedy).
(d) the whole default ``python -m landscape.epl`` from a cold organism cache.

Prints a table; writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from landscape.io import atomic_write_json


def peng_direction(model, d) -> dict:
    """The direction as Peng et al.'s code holds it: a tensor for every state-dict key it moves, so a tied weight
    (SmolLM2's embedding and head) has it under both names. With it under one name only, ``load_state_dict`` copies
    the unmoved other one last into the shared storage and silently undoes the move."""
    sd = model.state_dict()
    out = {k: d.get(k) for k in d.names()}
    by_ptr = {sd[k].data_ptr(): v for k, v in out.items() if k in sd}
    for k, w in sd.items():
        if k not in out and w.data_ptr() in by_ptr:
            out[k] = by_ptr[w.data_ptr()]
    return out


def peng_point(model, tok, orig_sd, direction, alpha, prompts, max_new_tokens, judge):
    """One grid point the way Peng et al.'s released code does it."""
    from torch.utils.data import DataLoader

    new_sd = {}
    for k, w in orig_sd.items():
        new_sd[k] = w + alpha * direction[k] if k in direction else w.clone()
    model.load_state_dict(new_sd)
    loader = DataLoader(prompts, batch_size=4, shuffle=False, num_workers=8, pin_memory=True)
    answers = []
    for batch in loader:
        texts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        answers += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    verdicts = judge(list(prompts), answers)
    return 100.0 * sum(v.unsafe for v in verdicts) / len(verdicts), answers


def main(argv: list[str] | None = None) -> dict:
    import warnings

    from landscape.backend import HFBackend
    from landscape.directions import difference, normalize, random_like
    from landscape.generation import GenerationSettings
    from landscape.judges import CachedJudge, KeywordJudge
    from landscape.loading import load_model
    from landscape.metrics import epl_adaptive, epl_from_grid
    from landscape.organism import build_organism, world
    from landscape.scan import SafetyEvaluator, linspace, scan_1d

    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--peng-points", type=int, default=5, help="grid points timed with Peng's loop")
    ap.add_argument("--skip-cold", action="store_true", help="skip (d), the cold-cache run of landscape.epl")
    ap.add_argument("--json", default="benchmarks/results/landscape.json")
    ns = ap.parse_args(argv)

    org = build_organism(ns.preset, progress=False)
    prompts = world.eval_prompts()[: ns.prompts]
    model, tok = load_model(org["aligned"])
    backend = HFBackend(model, tok)
    aligned = str(org["aligned"])
    dirs = {
        "d_aligned": normalize(difference(org["base"], aligned, name="d_aligned"), aligned),
        "d_harm": normalize(difference(aligned, org["harmful-100"], name="d_harm"), aligned),
        "random-0": normalize(random_like(aligned, seed=0, name="random-0"), aligned),
    }
    report: dict = {
        "preset": ns.preset,
        "prompts": len(prompts),
        "max_new_tokens": ns.max_new_tokens,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }

    def new_evaluator() -> SafetyEvaluator:
        """Ours: one batch per point, keyword verdicts cached (a fresh cache for each measurement)."""
        return SafetyEvaluator(
            prompts,
            CachedJudge(KeywordJudge()),
            GenerationSettings(max_new_tokens=ns.max_new_tokens),
        )

    # (a) + (c): seconds per point and identical ASR
    alphas = linspace(0.0, 0.04, ns.peng_points)
    d = dirs["d_harm"]
    orig_sd = {k: v.detach().clone().float().cpu() for k, v in model.state_dict().items()}
    dvec = peng_direction(model, d)
    t0 = time.perf_counter()
    peng = [peng_point(model, tok, orig_sd, dvec, a, prompts, ns.max_new_tokens, KeywordJudge()) for a in alphas]
    peng_s = (time.perf_counter() - t0) / len(alphas)
    model.load_state_dict(orig_sd)
    ev = new_evaluator()
    t0 = time.perf_counter()
    ours = scan_1d(backend, d, alphas, ev, progress=False)
    ours_s = (time.perf_counter() - t0) / len(alphas)
    same_asr = [p[0] for p in peng] == ours.metric("asr").tolist()
    same_answers = all(p[1] == r["metrics"]["responses"] for p, r in zip(peng, ours.records, strict=True))
    report["a"] = {
        "peng_s_per_point": peng_s,
        "ours_s_per_point": ours_s,
        "speedup": peng_s / ours_s,
        "alphas": alphas,
        "asr_peng": [p[0] for p in peng],
        "asr_ours": ours.metric("asr").tolist(),
        "identical_asr": same_asr,
        "identical_answers": same_answers,
    }

    # (b) time to EPL: uniform 201-point grid vs adaptive, per direction
    grid = linspace(-0.5, 0.5, 201)
    rows = {}
    for name, dd in dirs.items():
        ev = new_evaluator()
        t0 = time.perf_counter()
        res = scan_1d(backend, dd, grid, ev, progress=False)
        grid_s = time.perf_counter() - t0
        g = {s: epl_from_grid(grid, res.metric("asr"), 50.0, s) for s in (1, -1)}
        ev = new_evaluator()
        t0 = time.perf_counter()
        with backend.attach([dd]):

            def f(a, ev=ev):
                backend.set_point((a,))
                return ev(backend)["asr"]

            center = f(0.0)
            ad = {
                s: epl_adaptive(f, s, 50.0, first_step=0.01, max_alpha=0.5, tol=0.005, center_value=center)
                for s in (1, -1)
            }
        ad_s = time.perf_counter() - t0
        n_ad = 1 + sum(a.evaluations for a in ad.values())
        rows[name] = {
            "grid_points": len(grid),
            "grid_seconds_ours": grid_s,
            "grid_seconds_peng_est": len(grid) * peng_s,
            "adaptive_evals": n_ad,
            "adaptive_seconds": ad_s,
            "epl_grid": {s: g[s].value for s in g},
            "epl_adaptive": {s: ad[s].value for s in ad},
            "censored": {s: g[s].censored for s in g},
            "agree_within_resolution": all(abs(g[s].value - ad[s].value) <= 0.005 + 1e-9 for s in g),
        }
    report["b"] = rows
    tot_peng = sum(r["grid_seconds_peng_est"] for r in rows.values())
    tot_grid = sum(r["grid_seconds_ours"] for r in rows.values())
    tot_ad = sum(r["adaptive_seconds"] for r in rows.values())
    report["b_total"] = {
        "peng_grid_est": tot_peng,
        "ours_grid": tot_grid,
        "ours_adaptive": tot_ad,
        "speedup_vs_peng": tot_peng / tot_ad,
        "speedup_vs_our_grid": tot_grid / tot_ad,
    }

    # (d) cold-cache default run
    if not ns.skip_cold:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "SAFETY_LANDSCAPE_CACHE": str(Path(tmp) / "cache")}
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "landscape.epl", "--out", str(Path(tmp) / "out")],
                env=env,
                check=True,
                capture_output=True,
            )
            report["d_cold_epl_seconds"] = time.perf_counter() - t0

    a = report["a"]
    print(f"organism {ns.preset}, {len(prompts)} prompts, {ns.max_new_tokens} new tokens, {report['threads']} threads")
    print(
        f"(a) s/point: Peng loop {a['peng_s_per_point']:.3f}  ours {a['ours_s_per_point']:.3f}  "
        f"speedup {a['speedup']:.1f}x"
    )
    print(
        f"(c) identical ASR at all {len(alphas)} points: {a['identical_asr']} (identical answers: "
        f"{a['identical_answers']}); ASR {a['asr_ours']}"
    )
    print(
        f"(b) {'direction':<10} {'grid pts':>8} {'grid s':>7} {'Peng est s':>10} {'adapt evals':>11} "
        f"{'adapt s':>7} {'EPL+ grid/adapt':>17} {'EPL- grid/adapt':>17} agree"
    )
    for name, r in rows.items():

        def fmt(s, r=r):
            c = ">" if r["censored"][s] else ""
            return f"{c}{r['epl_grid'][s]:.3f}/{r['epl_adaptive'][s]:.3f}"

        print(
            f"    {name:<10} {r['grid_points']:>8} {r['grid_seconds_ours']:7.1f} {r['grid_seconds_peng_est']:10.0f} "
            f"{r['adaptive_evals']:>11} {r['adaptive_seconds']:7.2f} {fmt(1):>17} {fmt(-1):>17} "
            f"{r['agree_within_resolution']}"
        )
    b = report["b_total"]
    print(
        f"    total: Peng grid (est.) {b['peng_grid_est']:.0f} s, our grid {b['ours_grid']:.1f} s, adaptive "
        f"{b['ours_adaptive']:.2f} s -> {b['speedup_vs_peng']:.0f}x vs Peng, {b['speedup_vs_our_grid']:.0f}x vs "
        "our own grid"
    )
    if "d_cold_epl_seconds" in report:
        print(f"(d) python -m landscape.epl from a cold cache: {report['d_cold_epl_seconds']:.1f} s")
    atomic_write_json(ns.json, report, default=float)
    return report


if __name__ == "__main__":
    main()
