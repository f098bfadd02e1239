"""Generate the answers of `figures/data/labels/answers.jsonl` (the hand-labelled set's inputs).

    python figures/make_label_set.py --cache_dir CACHE [--out figures/data/labels/answers.jsonl]

Answers of the real-weights organism (``--preset smollm2``) to held-out AdvBench requests: every stage at its
centre, and the aligned stage along d_aligned, d_harm and a seeded random direction out to where it breaks. Each
line: ``id``, ``prompt``, ``answer``, ``stage``, ``direction``, ``alpha`` and the answer's ``nll`` under the aligned
model θ₀ (so coherence can be judged again without the model). The order is shuffled with a fixed seed, so that a
labeller reading it in order sees no stage or direction pattern; the labeller's file holds only ``id``, ``prompt``
and ``answer``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CENTRE = {"base": 40, "aligned": 40, "harmful-10": 24, "harmful-50": 24, "harmful-100": 40, "benign": 32}
ALONG = {"d_aligned": (-0.03, 0.015, 0.03), "d_harm": (0.005, 0.01, 0.02), "random-0": (0.1, 0.2, 0.4)}
PER_POINT = 24


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache_dir", required=True)
    ap.add_argument("--preset", default="smollm2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "labels" / "answers.jsonl"))
    ap.add_argument("--max_new_tokens", type=int, default=32)
    args = ap.parse_args(argv)

    from landscape.backend import HFBackend
    from landscape.coherence import Coherence
    from landscape.data import load_prompts
    from landscape.generation import GenerationSettings
    from landscape.io import atomic_write_text
    from landscape.loading import load_model
    from landscape.organism import build_organism

    org = build_organism(args.preset, seed=0, cache_dir=args.cache_dir, progress=False)
    prompts = load_prompts(org.eval_prompts_csv)
    st = GenerationSettings(max_new_tokens=args.max_new_tokens)
    rows = []
    aligned = HFBackend(*load_model(org["aligned"]))
    coh = Coherence()

    def add(stage, direction, alpha, ps, answers):
        nll = coh.nll(aligned, ps, answers)  # under θ₀ = the aligned stage, as every landscape here is centred
        for p, a, v in zip(ps, answers, nll, strict=True):
            rows.append({"prompt": p, "answer": a, "stage": stage, "direction": direction, "alpha": alpha,
                         "nll": None if v == float("inf") else round(v, 4)})  # fmt: skip

    offset = 0
    for stage, n in CENTRE.items():
        ps = prompts[offset : offset + n]  # different prompts per stage: more of AdvBench is seen
        offset = (offset + n) % len(prompts)
        be = aligned if stage == "aligned" else HFBackend(*load_model(org[stage]))
        add(stage, None, 0.0, ps, be.generate(ps, st))
    for name, alphas in ALONG.items():
        d = org.direction(name)
        with aligned.attach([d]):
            for i, a in enumerate(alphas):
                ps = prompts[(offset + i * PER_POINT) % len(prompts) :][:PER_POINT]
                aligned.set_point([a])
                answers = aligned.generate(ps, st)
                aligned.restore()
                add("aligned", name, a, ps, answers)
        offset = (offset + len(alphas) * PER_POINT) % len(prompts)
    random.Random(0).shuffle(rows)
    for i, r in enumerate(rows):
        r["id"] = i
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(args.out, text)
    blind = Path(args.out).with_name("to_label.jsonl")
    atomic_write_text(blind, "".join(json.dumps({k: r[k] for k in ("id", "prompt", "answer")},
                                                ensure_ascii=False) + "\n" for r in rows))  # fmt: skip
    print(f"wrote {len(rows)} answers to {args.out} and {blind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
