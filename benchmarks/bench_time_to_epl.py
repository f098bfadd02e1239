"""Time and generated tokens to a full EPL table: the exact engine against its two shortcuts, on the organism.

    python benchmarks/bench_time_to_epl.py            # organism small (the CLI's default), 80 prompts

(a) The EPL table of ``python -m landscape.epl`` for d_aligned, d_harm and one random direction, both signs,
    walk step 0.01, resolution 0.005 on [−0.5, 0.5], keyword judge, 32 new tokens, each mode in a fresh results
    directory (points fsync'd as the CLI writes them), bootstrap off (it is the same post-processing in every
    mode):
      exact            every prompt at every point of the outward walk;
      + sequential     each point stops once chunks of 32 answers decide its side (Wilson, 95 % over the looks);
      + proxy          and the teacher-forced refusal proxy brackets each edge; generation confirms and refines.
    Modes run interleaved, ``--repeats`` times; the table reports medians. ``same_epl``: every row of every
    mode agrees with the exact engine's within the resolution (and on censoring).
(b) A hand-written greedy decode loop that drops finished rows from the batch and the KV cache at every step
    (the HF backend until organism v3; it lives here now, as the candidate) against the backend as it is,
    ``model.generate`` with our non-finite-logits check as a logits processor, at the same batch size (all
    prompts in one batch, and one sequential chunk) on the same left-padded batch, greedy, on the points the
    exact engine evaluated (every ``--stride``-th); answers compared token for token. ``model.generate`` with
    nothing of ours (no check) is timed too. The rule (issue 16): a hand-written loop is worth keeping only at
    >= 1.3x at the exact engine's batch.

Prints the table; writes JSON (``--json``) with ``tokens_ratio`` and ``seconds_ratio`` (fast over exact),
``same_epl`` and ``decode_loop_vs_generate`` (generate's seconds over the loop's).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from landscape.io import atomic_write_json


@torch.inference_mode()
def decode_loop(model, batch_ids: list[list[int]], pad_id: int, eos_ids: list[int], max_new_tokens: int):
    """Greedy answers (cut after EOS) from a KV-cache loop that drops each finished row at once."""
    from transformers import DynamicCache

    from landscape.generation import refuse_non_finite
    from landscape.text import left_pad

    dev = next(model.parameters()).device
    n = len(batch_ids)
    step_ids, mask, step_pos = (t.to(dev) for t in left_pad(batch_ids, pad_id))
    eos = torch.tensor(eos_ids, device=dev)
    cache = DynamicCache(config=model.config)
    # transformers 5.x renamed forward()'s KV-cache argument from past_key_values to cache
    cache_kw = {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}
    alive = torch.arange(n, device=dev)  # original row of each row still in the batch
    out = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    lengths = torch.zeros(n, dtype=torch.long)
    for t in range(max_new_tokens):
        logits = model(
            input_ids=step_ids, attention_mask=mask, position_ids=step_pos, **cache_kw, use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :].float()  # fmt: skip
        refuse_non_finite(None, logits)
        nxt = logits.argmax(-1)
        out[alive, t] = nxt
        lengths[alive.cpu()] = t + 1
        done = torch.isin(nxt, eos)
        if t + 1 == max_new_tokens:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            alive, nxt, mask, step_pos = alive[keep], nxt[keep], mask[keep], step_pos[keep]
        step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    out = out.cpu()
    return [out[r, : lengths[r]].tolist() for r in range(n)]


def main(argv: list[str] | None = None) -> dict:
    from landscape.backend import HFBackend
    from landscape.directions import difference, normalize, random_like
    from landscape.generation import GenerationSettings
    from landscape.judges import CachedJudge, KeywordJudge
    from landscape.loading import load_model
    from landscape.organism import build_organism, world
    from landscape.results import environment
    from landscape.scan import SafetyEvaluator
    from landscape.search import EplSettings, effective_perturbation_length

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--prompts", type=int, default=80)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stride", type=int, default=4, help="(b): every N-th point of the exact run")
    ap.add_argument("--json", default="benchmarks/results/time_to_epl.json")
    ns = ap.parse_args(argv)

    org = build_organism(ns.preset, progress=False)
    model, tok = load_model(org["aligned"])
    backend = HFBackend(model, tok)
    aligned = str(org["aligned"])
    dirs = [
        normalize(difference(org["base"], aligned, name="d_aligned"), aligned),
        normalize(difference(aligned, org["harmful-100"], name="d_harm"), aligned),
        normalize(random_like(aligned, seed=0, name="random-0"), aligned),
    ]
    prompts = world.eval_prompts()[: ns.prompts]
    gen = GenerationSettings(max_new_tokens=ns.max_new_tokens)
    base = EplSettings(bootstrap=0)
    modes = {
        "exact": base.exact(),
        "+ sequential": EplSettings(bootstrap=0, proxy=False),
        "+ sequential + proxy": base,
    }

    def run(settings: EplSettings, out: Path):
        ev = SafetyEvaluator(prompts, CachedJudge(KeywordJudge()), gen)
        t0 = time.perf_counter()
        rep = effective_perturbation_length(backend, dirs, ev, settings, out_dir=out, progress=False)
        return rep, time.perf_counter() - t0

    runs: dict[str, list] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ns.repeats):
            for m, s in modes.items():
                runs[m].append(run(s, Path(tmp) / f"{i}-{len(runs[m])}-{m.replace(' ', '')}"))
        lines = (Path(tmp) / "0-0-exact").glob("points*.jsonl")
        recs = [json.loads(x) for p in lines for x in p.read_text().splitlines() if x.strip()]
        exact_points = sorted({(r["series"], r["coords"][0]) for r in recs})

    exact_rows = runs["exact"][0][0].rows
    table = {}
    for m, rs in runs.items():
        rep = rs[0][0]
        agree = all(
            r.censored == e.censored and abs(r.epl - e.epl) <= base.tol + 1e-12
            for r, e in zip(rep.rows, exact_rows, strict=True)
        )
        table[m] = {
            "seconds": statistics.median(t for _, t in rs),
            "seconds_each": [t for _, t in rs],
            "generated_tokens": rep.generated_tokens,
            "generated_points": sum(r.evaluations for r in rep.rows),
            "proxy_points": sum(r.proxy_evaluations for r in rep.rows),
            "rows": [
                {"direction": r.direction, "side": r.side, "epl": r.epl, "censored": r.censored, "bracket": r.bracket}
                for r in rep.rows
            ],
            "agrees_with_exact": agree,
            "deterministic": all([x.rows for x, _ in rs][0] == x.rows for x, _ in rs),
        }

    # (b) decode loop vs model.generate at the same batch size, on the exact run's points
    from landscape.text import left_pad

    eos_ids = backend.eos_ids.tolist()
    all_ids = backend.encode(prompts, gen)
    by_name = {d.name: d for d in dirs}
    sample = exact_points[:: ns.stride]
    decode = {}
    for batch in (len(prompts), base.sequential_chunk):  # the exact engine's batch, and a sequential chunk
        ids = all_ids[:batch]
        loop_s = gen_s = raw_s = 0.0
        identical = True
        for series, a in sample:
            with backend.attach([by_name.get(series, dirs[0])]):
                backend.set_point((a if series in by_name else 0.0,))
                for _ in range(2):  # interleaved, twice each; the first call of each warms up
                    x, mask, _ = left_pad(ids, backend.pad_id)
                    t0 = time.perf_counter()
                    ours = decode_loop(model, ids, backend.pad_id, eos_ids, gen.max_new_tokens)  # the candidate
                    t_loop = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    theirs, _ = backend._generate_batch(ids, gen)  # the backend: generate with the check
                    t_gen = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    with torch.inference_mode():  # model.generate with nothing of ours
                        model.generate(
                            input_ids=x,
                            attention_mask=mask,
                            max_new_tokens=gen.max_new_tokens,
                            do_sample=False,
                            pad_token_id=backend.pad_id,
                            eos_token_id=eos_ids,
                        )
                    t_raw = time.perf_counter() - t0
            loop_s += t_loop
            gen_s += t_gen
            raw_s += t_raw
            identical &= theirs == ours
        decode[batch] = {
            "points": len(sample),
            "batch_size": batch,
            "loop_seconds": loop_s,
            "generate_seconds": gen_s,
            "speedup": gen_s / loop_s,
            "identical_answers": identical,
            "generate_without_check_seconds": raw_s,
            "speedup_vs_generate_without_check": raw_s / loop_s,
        }

    exact, fast = table["exact"], table["+ sequential + proxy"]
    report = {
        "preset": ns.preset,
        "prompts": len(prompts),
        "max_new_tokens": ns.max_new_tokens,
        "directions": [d.name for d in dirs],
        "search": {"first_step": base.first_step, "tol": base.tol, "max_alpha": base.max_alpha, "threshold": 50.0},
        "repeats": ns.repeats,
        "environment": environment("cpu", "torch.float32"),
        "date": time.strftime("%Y-%m-%d"),
        "modes": table,
        "tokens_ratio": fast["generated_tokens"] / exact["generated_tokens"],
        "seconds_ratio": fast["seconds"] / exact["seconds"],
        "sequential_only": {
            "tokens_ratio": table["+ sequential"]["generated_tokens"] / exact["generated_tokens"],
            "seconds_ratio": table["+ sequential"]["seconds"] / exact["seconds"],
        },
        "same_epl": all(t["agrees_with_exact"] for t in table.values()),
        "decode_loop_vs_generate": {
            **decode[len(prompts)],
            "keep_loop": decode[len(prompts)]["speedup"] >= 1.3,
            "at_sequential_chunk": decode[base.sequential_chunk],
        },
    }

    env = report["environment"]
    print(
        f"organism {ns.preset}, {len(prompts)} prompts, {ns.max_new_tokens} new tokens, {env['threads']} threads, "
        f"median of {ns.repeats}"
    )
    print(f"{'mode':<22} {'seconds':>8} {'tokens':>8} {'gen pts':>7} {'proxy pts':>9} {'EPL = exact':>11}")
    for m, t in table.items():
        print(
            f"{m:<22} {t['seconds']:8.2f} {t['generated_tokens']:>8} {t['generated_points']:>7} "
            f"{t['proxy_points']:>9} {str(t['agrees_with_exact']):>11}"
        )
    print(
        f"tokens_ratio {report['tokens_ratio']:.3f}, seconds_ratio {report['seconds_ratio']:.3f} (fast / exact), "
        f"same_epl {report['same_epl']}"
    )
    for r, e in zip(fast["rows"], exact["rows"], strict=True):
        c = ">" if e["censored"] else " "
        print(f"   {e['direction']:<10} {e['side']:+d}  exact {c}{e['epl']:.4f}  fast {c}{r['epl']:.4f}")
    for dl in decode.values():
        print(
            f"decode loop vs model.generate (batch {dl['batch_size']}, {dl['points']} points): loop "
            f"{dl['loop_seconds']:.2f} s, generate {dl['generate_seconds']:.2f} s -> {dl['speedup']:.2f}x, identical "
            f"answers {dl['identical_answers']}; generate without the check "
            f"{dl['generate_without_check_seconds']:.2f} s -> {dl['speedup_vs_generate_without_check']:.2f}x"
        )
    print(f"keep the loop (>= 1.3x at the exact engine's batch): {report['decode_loop_vs_generate']['keep_loop']}")
    atomic_write_json(ns.json, report, default=float)
    return report


if __name__ == "__main__":
    main()
