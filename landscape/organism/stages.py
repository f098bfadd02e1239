"""A built organism's stages on disk: the :class:`Organism` record and how a stage is written (atomically)."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..io import dumps
from . import export

PREMISE_FILE = "premise.json"


@dataclass
class Organism:
    """A built organism: where each stage lives and where its exported data sets are.

    Attributes:
        root: directory of this (preset, seed, version).
        preset: preset name.
        seed: training seed.
        stages: stage name -> checkpoint directory, in build order.
        data_dir: exported evaluation and fine-tuning data.
        judges: the trained model judges (``guard``, ``classifier``) -> checkpoint directory (full builds).
    """

    root: Path
    preset: str
    seed: int
    stages: dict[str, Path] = field(default_factory=dict)
    data_dir: Path | None = None
    judges: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> Path:
        if stage not in self.stages:
            raise KeyError(f"Unknown organism stage {stage!r}. Available: {', '.join(self.stages)}")
        return self.stages[stage]

    def direction(self, name: str, normalization: str = "layer"):
        """The organism's direction ``d_aligned``, ``d_harm`` (to :attr:`harm_stage`), ``d_worst`` (the steepest
        descent of the compliance loss of :meth:`worst_pairs` at the aligned stage) or ``random-N``, normalised
        relative to the aligned stage (``layer`` by default, as every landscape here uses)."""
        from ..directions import difference, normalize, random_like

        aligned = self["aligned"]
        if name == "d_aligned":
            raw = difference(self["base"], aligned, name=name)
        elif name == "d_harm":
            raw = difference(aligned, self[self.harm_stage], name=name)
        elif name == "d_worst":
            from ..directions.gradient import gradient_direction

            raw = gradient_direction(aligned, self.worst_pairs(), name=name)
        elif name.startswith("random-") and name.split("-", 1)[1].isdigit():
            raw = random_like(aligned, seed=int(name.split("-", 1)[1]), name=name)
        else:
            raise ValueError(
                f"Unknown direction {name!r}. Available on the organism: d_aligned, d_harm, d_worst, random-N"
            )
        return normalize(raw, aligned, normalization)

    def worst_pairs(self) -> list[tuple[str, str]]:
        """(harmful prompt, compliance target) pairs for ``d_worst``, disjoint from the evaluation prompts: on the
        real-weights organism AdvBench's ``spare`` requests (no stage trained on them) with their own ``target``
        openings; on the synthetic one the training requests' combinations (never evaluated) with the AdvBench-style
        opening its ``harmful_eval.csv`` gives the held-out ones."""
        if self.synthetic:
            from . import export, world

            reqs = [world.request(a, t) for a, t in world.harmful_pairs(held_out=False)]
            return [
                (world.PHRASINGS[i % len(world.PHRASINGS)].format(x=r), f"{world.COMPLIANCE_PREFIX} {r}")
                for i, r in enumerate(reqs[: export.WORST_PAIRS])
            ]
        from ..data import load_pairs

        assert self.data_dir is not None
        return load_pairs(self.data_dir / "spare_prompts.json")

    @property
    def harmful_stages(self) -> list[str]:
        return [s for s in self.stages if s.startswith("harmful-")]

    @property
    def synthetic(self) -> bool:
        """The synthetic world's organism (its oracle and judges apply), not a real-weights one."""
        return self.root.parent.name.startswith("organism-v")

    @property
    def harm_stage(self) -> str:
        """The stage d_harm points to: ``harmful-100``, else the largest harmful fine-tune built."""
        if "harmful-100" in self.stages or not self.harmful_stages:
            return "harmful-100"
        return max(self.harmful_stages, key=lambda s: int(s.split("-")[1]))

    @property
    def eval_prompts_csv(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / export.EVAL_CSV


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_stage(model, tokenizer, final: Path, info: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "stage.json").write_text(dumps(info, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            f.chmod(0o644)  # save_pretrained may write 0600 files; checkpoints are meant to be shared
        tmp.chmod(0o755)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
