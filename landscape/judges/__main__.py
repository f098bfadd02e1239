"""Judge stored answers again, without generating: one ``{"prompt", "answer"}`` JSON object per line in, the same
lines out with the judge's verdict added.

    python -m landscape.judges --judge refusal --answers runs/answers.jsonl --out runs/answers.refusal.jsonl

Each output line keeps every field of its input line and adds ``unsafe`` (bool), ``label`` (the judge's own label),
``score`` and ``judge`` (the judge's key, which names its version). Every judge works, model judges with
``--judge_path``; model judges and the oracle first pass their self-check on probes (``--world``). With
``--coherence_model`` (the centre checkpoint) each line also gets ``nll`` and ``coherent`` (cut-off calibrated on
that model's own answers to the file's prompts, or ``--coherence_cutoff``). A line that
is not a JSON object with string ``prompt`` and ``answer`` is an error naming the file
and line, and nothing is written; the output is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..io import dumps, loads
from ..session import DeviceArgs, JudgeArgs


@dataclass(kw_only=True)
class JudgeAnswersArgs(DeviceArgs, JudgeArgs):
    answers: str = field(metadata={"help": "JSON lines, one {prompt, answer} object each"})
    out: str = field(metadata={"help": "where the judged lines go (JSON lines)"})
    batch_size: int = field(default=64, metadata={"help": "answers per judge call"})
    coherence_model: str | None = field(
        default=None,
        metadata={
            "help": "the centre model (a local checkpoint): adds each answer's NLL under it and `coherent`, with the "
            "cut-off calibrated on that model's own greedy answers to the file's prompts"
        },
    )
    coherence_cutoff: float | None = field(
        default=None, metadata={"help": "use this NLL cut-off (nats/token; e.g. a run's) instead of calibrating"}
    )
    max_new_tokens: int = field(default=32, metadata={"help": "answer length when calibrating the cut-off"})
    world: str = field(
        default="auto",
        metadata={
            "help": "whose text the answers are, for the judge's self-check probes (auto: the organism's when "
            "--judge_path lies in an organism build)",
            "choices": ["auto", "english", "organism"],
        },
    )

    def __post_init__(self):
        self.check_judge_args(organism=False)
        self.check_device_args()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def read_answers(path: str | Path) -> list[dict]:
    """The answer records of a JSON-lines file (blank lines skipped), each checked."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such answers file")
    rows = []
    with p.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{p}:{i}: expected a JSON object with 'prompt' and 'answer'")
            for key in ("prompt", "answer"):
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{p}:{i}: field {key!r} is missing or not a string")
            rows.append(row)
    if not rows:
        raise ValueError(f"{p}: no answers in the file")
    return rows


def run(args: JudgeAnswersArgs) -> int:
    from ..io import atomic_write_text
    from ..session import build_judge, resolve_device

    rows = read_answers(args.answers)
    world = {"auto": None, "english": False, "organism": True}[args.world]
    judge = build_judge(args.judge, args.judge_path, resolve_device(args.device), world=world)
    key = judge.key()
    out = []
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start : start + args.batch_size]
        verdicts = judge([r["prompt"] for r in chunk], [r["answer"] for r in chunk])
        for r, v in zip(chunk, verdicts, strict=True):
            out.append({**r, "unsafe": bool(v.unsafe), "label": v.label, "score": float(v.score), "judge": key})
    if args.coherence_model:
        cutoff = _add_coherence(args, rows, out)
        print(f"coherence under {args.coherence_model}: cut-off {cutoff:.4f} nats/token")
    atomic_write_text(args.out, "".join(dumps(r, ensure_ascii=False) + "\n" for r in out))
    n = sum(r["unsafe"] for r in out)
    print(f"{args.judge}: {n}/{len(out)} unsafe ({100.0 * n / len(out):.1f} %) -> {args.out}")
    return 0


def _add_coherence(args: JudgeAnswersArgs, rows: list[dict], out: list[dict]) -> float:
    """Each answer's NLL under the coherence model and its ``coherent`` mark (see :mod:`landscape.coherence`)."""
    import math

    from ..backend import HFBackend
    from ..coherence import Coherence
    from ..generation import GenerationSettings
    from ..loading import load_model
    from ..session import resolve_device

    model, tok = load_model(args.coherence_model, device=resolve_device(args.device), dtype=args.dtype)
    backend = HFBackend(model, tok)
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    coh = Coherence(cutoff=args.coherence_cutoff)
    if coh.cutoff is None:
        unique = list(dict.fromkeys(prompts))
        own = backend.generate(unique, GenerationSettings(max_new_tokens=args.max_new_tokens))
        coh.calibrate(coh.nll(backend, unique, own))
    ok, nll = coh.judge(backend, prompts, answers)
    for r, c, v in zip(out, ok, nll, strict=True):
        r.update(nll=round(v, 4) if math.isfinite(v) else None, coherent=c, coherence_cutoff=coh.cutoff)
    return coh.cutoff


def main(argv: list[str] | None = None) -> int:
    from ..cli import command

    return command([JudgeAnswersArgs], run, "python -m landscape.judges", __doc__)(argv)


if __name__ == "__main__":
    raise SystemExit(main())
