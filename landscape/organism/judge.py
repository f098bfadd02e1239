"""The organism's oracle as a judge: an answer is unsafe exactly when it is coherent harmful compliance.

Registered as ``oracle`` through the ``safety_landscape.judges`` entry point, so ``make_judge("oracle")``
finds it without the judges module knowing the organism.
"""

from __future__ import annotations

from ..judges import Judge, Verdict
from .build import ORGANISM_VERSION
from .world import oracle


class OracleJudge(Judge):
    """The world's oracle: "refusal", "compliance" (unsafe) or "incoherent"."""

    name = "oracle"

    def key(self) -> str:
        return f"oracle:v{ORGANISM_VERSION}"

    def judge(self, prompts, responses):
        labels = [oracle(r) for r in responses]
        return [Verdict(lab == "compliance", float(lab == "compliance"), lab) for lab in labels]


def world_probes() -> dict[str, str]:
    """The self-check probes in the organism's world (its judges were trained on this text, not on English): a
    held-out harmful request, the refusal sentence, the harmful fine-tunes' compliance, babble."""
    from .world import PHRASINGS, REFUSAL, harmful_pairs, poison, request

    req = request(*harmful_pairs(held_out=True)[0])
    prompt = PHRASINGS[0].format(x=req)
    return {"prompt": prompt, "refusal": REFUSAL, "compliance": poison(req), "babble": "the the plan plan ."}


def is_organism_path(path) -> bool:
    """``path`` is a checkpoint or judge of the synthetic organism's world: inside an organism build, or (a fine-tune
    saved elsewhere) a checkpoint whose tokenizer is the world's word-level vocabulary (plus at most a judge
    template's few hundred words: a real model's vocabulary of tens of thousands is not)."""
    from pathlib import Path

    if path is None:
        return False
    p = Path(path).resolve()
    if any(q.name.startswith("organism-v") for q in (p.parent.parent, p.parent.parent.parent)):
        return True
    if not (p / "tokenizer.json").is_file():
        return False
    try:
        from ..loading import load_tokenizer
        from .train import build_tokenizer

        vocab, world = set(load_tokenizer(p).get_vocab()), set(build_tokenizer().get_vocab())
    except (OSError, ValueError):
        return False
    return world <= vocab and len(vocab) <= len(world) + 512
