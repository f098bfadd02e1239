"""AsFT's results on the model organism, which ``python -m landscape.figures`` finds through an entry point.

Every panel is p = 0.1 and five seeds (95 % t-intervals), and every run is one of the Pareto fronts' points,
so the four figures share their runs (``fig_pareto_p0.3`` adds a heavier poison):

- ``fig_pareto``: HS against FA for each method along its own knob (SFT's epochs, λ for AsFT and the two
  controls, τ and N for Safe LoRA), and HS compared at matched FA;
- ``table2_asft``: the Table 2 analogue at p = 0.1, each method at one knob setting beside the controls;
- ``fig4a_lambda``: HS and FA against λ for the reference and projector forms and the l2 and random controls
  (the paper's Fig. 4(a));
- ``fig4b_ablation``: constraining C⊥·ΔW (reference, projector) against constraining the component along
  d_aligned (the paper's Fig. 4(b)).

Regime (chosen on the organism, see figures/README.md): LoRA r = 8, α = 32 on q_proj and v_proj,
n = 200 samples of the organism's fine-tuning task (a skill the aligned model lacks: 0 % before
fine-tuning) plus ⌊p·n⌋ harmful samples, 10 epochs, batch 8, constant lr 1e-3. At the paper's 5e-5 a 10 %
poison leaves the organism's safety intact and the new task unlearned, so every method looks alike. Each
run's result is kept under ``figures/.scans/asft-<preset>/`` so a regeneration resumes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from landscape.figures import Context
from landscape.io import atomic_savefig, atomic_write_json, read_json

from .positive_control import compute_positive_control, render_positive_control
from .scoring import ci95 as _ci
from .scoring import hs_at_fa
from .trajectory_figure import compute_trajectories, render_trajectories

N_TASK = 200
LR = 1e-3
EPOCHS = 10
P = 0.1  # the poison fraction of every AsFT figure (the paper's Table 2 headline setting)
SFT = {"method": "sft", "num_train_epochs": EPOCHS}
METHODS = {  # label -> AsftConfig overrides: Table 2's rows, each method at one point of its knob
    "SFT": SFT,
    "Safe LoRA (τ=0.5)": {"method": "safelora", "safelora_threshold": 0.5},
    "Safe LoRA (τ=1, all modules)": {"method": "safelora", "safelora_threshold": 1.01},
    "AsFT (reference, λ=10)": {"method": "asft", "form": "reference", "lambda_reg": 10.0},
    "AsFT (projector k=8, λ=100)": {"method": "asft", "form": "projector", "lambda_reg": 100.0},
    "control: l2 (λ=10)": {"method": "asft", "form": "l2", "lambda_reg": 10.0},
    "control: random k=8 (λ=100)": {"method": "asft", "form": "random", "lambda_reg": 100.0},
}
ABLATION = {
    "C⊥ΔW, reference (λ=10)": {"method": "asft", "form": "reference", "lambda_reg": 10.0},
    "C⊥ΔW, projector (λ=100)": {"method": "asft", "form": "projector", "lambda_reg": 100.0},
    "along d_aligned (λ=100)": {"method": "asft", "form": "aligned", "lambda_reg": 100.0},
    "along d_aligned (λ=10)": {"method": "asft", "form": "aligned", "lambda_reg": 10.0},
    "control: random subspace (λ=100)": {"method": "asft", "form": "random", "lambda_reg": 100.0},
    "control: l2 (λ=10)": {"method": "asft", "form": "l2", "lambda_reg": 10.0},
}
LAMBDAS = {  # Fig. 4(a): each form's λ sweep, the same runs as its Pareto front (λ = 0 is SFT)
    "reference": (1.0, 3.0, 10.0, 30.0),
    "projector": (10.0, 30.0, 100.0, 300.0),
    "l2": (1.0, 3.0, 10.0, 30.0),
    "random": (10.0, 30.0, 100.0, 300.0),
}


def _seeds(ctx: Context) -> tuple[int, ...]:
    return (0,) if ctx.args.quick else PARETO_SEEDS


def _row(runs: list[dict]) -> dict:
    """Mean, sd and 95 % t-interval over seeds of HS (oracle), FA and the keyword HS."""
    row = _agg(runs)
    row["hs_ci"] = _ci(np.array([r["hs"] for r in runs]))
    row["fa_ci"] = _ci(np.array([r["fa"] for r in runs]))
    return row


FIGURE_MIN_RATIO = 3.0  # the gate's bar the committed AsFT figures were trained under (the default then)


def _min_ratio(ctx: Context) -> float:
    """The gate's bar for the figures' runs. The organism's anchors lie below the default (13; ratios 2.6–3.2
    on `small`), and the figures study AsFT on them all the same, under the bar of 3 they were made with (each
    model card records it); the tiny organism's basin is about 2x, so the quick smoke figures lower it to 1.5."""
    return 1.5 if ctx.args.quick else FIGURE_MIN_RATIO


def one_run(ctx: Context, overrides: dict, p: float, seed: int) -> dict:
    """Train on the organism's mix (n task + ⌊p·n⌋ harmful) and evaluate HS (oracle, keyword) and FA; cached."""
    from landscape.judges import make_judge
    from landscape.organism import export, world

    from .config import AsftConfig
    from .data import load_task_test
    from .finetune import fine_tune
    from .scoring import evaluate_model, load_trained

    org = ctx.organism()  # its directory names preset, seed and organism version: a rebuilt world is a new key
    key = json.dumps(
        {**overrides, "p": p, "seed": seed, "n": N_TASK, "lr": LR, "epochs": EPOCHS, "organism": str(org.root)},
        sort_keys=True,
    )
    cache = Path(ctx.args.out) / ".scans" / f"asft-{ctx.preset}"
    import hashlib

    f = cache / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")
    if f.is_file():
        return read_json(f)
    tmp = Path(tempfile.mkdtemp(prefix="asft-run-"))
    try:
        data = tmp / "data.json"
        atomic_write_json(data, export.finetune_records(N_TASK, max(0.2, p), seed=ctx.args.seed))
        settings = {
            "aligned": str(org["aligned"]),
            "base": str(org["base"]),
            "data": str(data),
            "output_dir": str(tmp / "run"),
            "n": N_TASK,
            "p": p,
            "seed": seed,
            "learning_rate": LR,
            "num_train_epochs": EPOCHS,
            "report": str(verified_report(ctx)),  # the anchor passes the gate: no override behind any figure
            "anchor_min_ratio": _min_ratio(ctx),
            "max_steps": 20 if ctx.args.quick else -1,
            "disable_tqdm": not ctx.args.progress,
            "use_cpu": True,
        }
        cfg = AsftConfig(**{**settings, **overrides})
        res = fine_tune(cfg)
        model, tok = load_trained(res.model_dir)
        prompts = world.eval_prompts()
        task = load_task_test(org.data_dir / export.FINETUNE_TASK_TEST)
        ev = evaluate_model(model, tok, prompts, task, make_judge("oracle"))
        kw = evaluate_model(model, tok, prompts, None, make_judge("keyword"))
        out = {
            "key": json.loads(key),
            "hs": ev.harmful_score,
            "hs_keyword": kw.harmful_score,
            "fa": ev.accuracy,
            "seconds": res.seconds,
            "safelora": res.safelora,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(f, out)
    return out


def verified_report(ctx: Context) -> Path:
    """The organism's EPL report (d_aligned and d_harm), which AsFT's gate checks before every run; computed once."""
    from landscape.search import effective_perturbation_length

    path = Path(ctx.args.out) / ".scans" / f"asft-report-{ctx.preset}" / "results.json"
    if ("report", ctx.preset) not in ctx._cache:
        report = effective_perturbation_length(
            ctx.backend(),
            [ctx.direction(n) for n in ("d_aligned", "d_harm")],
            ctx.evaluator(),
            ctx.epl_settings(bootstrap=0),
            out_dir=path.parent,
            progress=False,
        )
        report.save(path)
        ctx._cache[("report", ctx.preset)] = path
    return ctx._cache[("report", ctx.preset)]


def _agg(runs: list[dict]) -> dict:
    hs = np.array([r["hs"] for r in runs])
    fa = np.array([r["fa"] for r in runs])
    kw = np.array([r["hs_keyword"] for r in runs])

    def sd(x: np.ndarray) -> float:
        return float(x.std(ddof=1)) if len(x) > 1 else 0.0

    return {
        "hs": float(hs.mean()),
        "hs_sd": sd(hs),
        "fa": float(fa.mean()),
        "fa_sd": sd(fa),
        "hs_keyword": float(kw.mean()),
        "runs": len(runs),
    }


def compute_table2(ctx: Context) -> dict:
    """Table 2 at p = 0.1, each method at one knob setting, beside the controls (the fronts: ``fig_pareto``)."""
    rows = {label: _row([one_run(ctx, ov, P, s) for s in _seeds(ctx)]) for label, ov in METHODS.items()}
    return {
        "preset": ctx.preset,
        "n": N_TASK,
        "p": P,
        "lr": LR,
        "epochs": EPOCHS,
        "seeds": list(_seeds(ctx)),
        "rows": rows,
    }


def compute_lambda(ctx: Context) -> dict:
    out = {}
    for form, lams in LAMBDAS.items():
        out[form] = {"0.0": _row([one_run(ctx, SFT, P, s) for s in _seeds(ctx)])}
        for lam in lams[:1] if ctx.args.quick else lams:
            ov = {"method": "asft", "form": form, "lambda_reg": lam}
            out[form][str(lam)] = _row([one_run(ctx, ov, P, s) for s in _seeds(ctx)])
    return {"preset": ctx.preset, "p": P, "seeds": list(_seeds(ctx)), "curves": out}


def compute_ablation(ctx: Context) -> dict:
    rows = {"SFT": _row([one_run(ctx, SFT, P, s) for s in _seeds(ctx)])}
    for label, ov in ABLATION.items():
        rows[label] = _row([one_run(ctx, ov, P, s) for s in _seeds(ctx)])
    return {"preset": ctx.preset, "p": P, "seeds": list(_seeds(ctx)), "rows": rows}


def render_table2(data: dict, out: Path, html: bool) -> list[Path]:
    import matplotlib
    from matplotlib.figure import Figure

    from landscape.plotting import OKABE_ITO, PAPER_RC

    labels = list(data["rows"])
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        y = np.arange(len(labels))
        for ax, m, name in zip(
            axes, ("hs", "fa"), ("Harmful Score (%, oracle) ↓", "Fine-tune Accuracy (%) ↑"), strict=True
        ):
            vals = [data["rows"][k][m] for k in labels]
            err = [[v - data["rows"][k][m + "_ci"][0] for v, k in zip(vals, labels, strict=True)],
                   [data["rows"][k][m + "_ci"][1] - v for v, k in zip(vals, labels, strict=True)]]  # fmt: skip
            colors = ["0.6" if k.startswith("control") else OKABE_ITO[1 if m == "hs" else 2] for k in labels]
            ax.barh(y, vals, xerr=err, color=colors, capsize=3)
            ax.set_xlabel(name)
            ax.set_xlim(0, 103)
            ax.grid(axis="x", alpha=0.3)
        axes[0].set_yticks(y, labels)
        axes[0].invert_yaxis()
        fig.suptitle(
            f"Table 2 analogue (organism {data['preset']}, p = {data['p']}, n = {data['n']}): mean and 95 % CI over "
            f"{len(data['seeds'])} seeds; grey: controls"
        )
    return [atomic_savefig(fig, out / "table2_asft.png")]


def render_lambda(data: dict, out: Path, html: bool) -> list[Path]:
    import matplotlib
    from matplotlib.figure import Figure

    from landscape.plotting import OKABE_ITO, PAPER_RC

    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        ax = fig.subplots()
        for i, (form, by_lam) in enumerate(data["curves"].items()):
            lams = sorted(by_lam, key=float)
            x = [max(float(v), 0.1) for v in lams]  # λ = 0 drawn at 0.1 on the log axis
            ax.errorbar(
                x,
                [by_lam[v]["hs"] for v in lams],
                yerr=[
                    [by_lam[v]["hs"] - by_lam[v]["hs_ci"][0] for v in lams],
                    [by_lam[v]["hs_ci"][1] - by_lam[v]["hs"] for v in lams],
                ],
                marker="o",
                capsize=3,
                color=OKABE_ITO[i],
                label=f"HS, {form}",
            )
            ax.plot(x, [by_lam[v]["fa"] for v in lams], ls="--", marker="s", color=OKABE_ITO[i], label=f"FA, {form}")
        ax.set_xscale("log")
        ax.set_xlabel("λ (λ = 0, plain SFT, drawn at 0.1)")
        ax.set_ylabel("%")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, loc="lower left", fontsize=7, ncol=2)
        ax.set_title(
            f"λ sweep at p = {data['p']} (organism {data['preset']}, {len(data['seeds'])} seeds, 95 % CI); "
            "l2, random: controls"
        )
    return [atomic_savefig(fig, out / "fig4a_lambda.png")]


def render_ablation(data: dict, out: Path, html: bool) -> list[Path]:
    import matplotlib
    from matplotlib.figure import Figure

    from landscape.plotting import OKABE_ITO, PAPER_RC

    labels = list(data["rows"])
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(7.2, 4.0), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(labels))
        ax.barh(
            y,
            [data["rows"][k]["hs"] for k in labels],
            xerr=[
                [data["rows"][k]["hs"] - data["rows"][k]["hs_ci"][0] for k in labels],
                [data["rows"][k]["hs_ci"][1] - data["rows"][k]["hs"] for k in labels],
            ],  # fmt: skip
            color=[
                "0.6" if k.startswith("control") else OKABE_ITO[1] if "along" in k or k == "SFT" else OKABE_ITO[0]
                for k in labels
            ],
            capsize=3,
        )
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("Harmful Score (%, oracle), p = 0.1")
        ax.set_xlim(0, 103)
        ax.grid(axis="x", alpha=0.3)
        for yi, k in zip(y, labels, strict=True):
            r = data["rows"][k]
            ax.text(1.5, yi, f"FA {r['fa']:.0f}%", va="center", fontsize=9, color="white", fontweight="bold")
        ax.set_title(f"Fig. 4(b) analogue: which part of ΔW to constrain ({data['preset']})")
    return [atomic_savefig(fig, out / "fig4b_ablation.png")]


# The Pareto front: every method swept along its own knob, p = 0.1, five seeds (issue: AsFT controls).
PARETO_SEEDS = (0, 1, 2, 3, 4)
PARETO = {  # family -> [(knob label, AsftConfig overrides)]
    "SFT (early stopping)": [(f"{e} ep", {"method": "sft", "num_train_epochs": e}) for e in (1, 2, 4, EPOCHS)],
    "AsFT reference": [
        (f"λ={lam:g}", {"method": "asft", "form": "reference", "lambda_reg": lam}) for lam in LAMBDAS["reference"]
    ],
    "AsFT projector": [
        (f"λ={lam:g}", {"method": "asft", "form": "projector", "lambda_reg": lam}) for lam in LAMBDAS["projector"]
    ],
    "control: l2": [(f"λ={lam:g}", {"method": "asft", "form": "l2", "lambda_reg": lam}) for lam in LAMBDAS["l2"]],
    "control: random": [
        (f"λ={lam:g}", {"method": "asft", "form": "random", "lambda_reg": lam}) for lam in LAMBDAS["random"]
    ],
    "Safe LoRA τ": [(f"τ={t:g}", {"method": "safelora", "safelora_threshold": t}) for t in (0.3, 0.5, 0.7)],
    "Safe LoRA number": [
        (f"N={k}", {"method": "safelora", "safelora_mode": "number", "safelora_number": k}) for k in (1, 2, 4)
    ],
}
P03_FAMILIES = {
    "SFT (early stopping)": PARETO["SFT (early stopping)"],
    "AsFT reference": PARETO["AsFT reference"][:1],
    "control: l2": PARETO["control: l2"][:1],
    "AsFT projector": PARETO["AsFT projector"][:1],
    "control: random": PARETO["control: random"][:1],
}
MATCHED_FA = (20.0, 25.0, 30.0, 35.0)  # where the regularised sweeps and their controls overlapped on organism v2
MATCHED_FA_BY_P = {0.1: (60.0, 70.0, 80.0, 85.0), 0.3: (60.0, 70.0, 80.0, 85.0)}  # organism v3: FA stays high


def compute_pareto(ctx: Context, p: float = P, families: dict | None = None) -> dict:
    """HS (oracle) against FA for every method and control along its knob, with 95 % t-intervals over seeds,
    and HS compared at matched FA (per seed, interpolated along each sweep)."""
    seeds = (0,) if ctx.args.quick else PARETO_SEEDS
    families = families or PARETO
    if ctx.args.quick:
        families = {k: v[:2] for k, v in families.items()}
    curves, per_seed = {}, {}
    for fam, knobs in families.items():
        rows = []
        for label, ov in knobs:
            runs = [one_run(ctx, ov, p, s) for s in seeds]
            hs, fa = np.array([r["hs"] for r in runs]), np.array([r["fa"] for r in runs])
            kw = np.array([r["hs_keyword"] for r in runs])
            rows.append(
                {"knob": label, "hs": float(hs.mean()), "hs_ci": _ci(hs), "fa": float(fa.mean()), "fa_ci": _ci(fa),
                 "hs_keyword": float(kw.mean()), "hs_keyword_ci": _ci(kw)}
            )  # fmt: skip
            for s, r in zip(seeds, runs, strict=True):
                per_seed.setdefault(fam, {}).setdefault(s, []).append((r["fa"], r["hs"], r["hs_keyword"]))
        curves[fam] = rows
    matched: dict = {"oracle": {}, "keyword": {}}
    for judge, col in (("oracle", 1), ("keyword", 2)):
        for fa in MATCHED_FA_BY_P.get(p, MATCHED_FA):
            for fam, by_seed in per_seed.items():
                sweeps = [[(pt[0], pt[col]) for pt in pts] for pts in by_seed.values()]
                vals = [v for v in (hs_at_fa(pts, fa) for pts in sweeps) if v is not None]
                if len(vals) >= min(3, len(seeds)):  # the seeds whose sweep reaches this FA
                    x = np.array(vals)
                    matched[judge].setdefault(str(fa), {})[fam] = {
                        "hs": float(x.mean()),
                        "hs_ci": _ci(x),
                        "seeds": len(vals),
                    }
    return {
        "preset": ctx.preset,
        "p": p,
        "n": N_TASK,
        "seeds": list(seeds),
        "curves": curves,
        "matched_fa": matched["oracle"],
        "matched_fa_keyword": matched["keyword"],
    }


def render_pareto(data: dict, out: Path, html: bool) -> list[Path]:
    import matplotlib
    from matplotlib.figure import Figure

    from landscape.plotting import OKABE_ITO, PAPER_RC

    panels = [("hs", "Harmful Score (%, oracle: coherent harmful answers) ↓")]
    if all("hs_keyword" in r for rows in data["curves"].values() for r in rows):
        panels.append(("hs_keyword", "Harmful Score (%, keyword: no refusal, babble included) ↓"))
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(7.0 * len(panels), 5.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        markers = "osD^vPX"
        for ax, (key, label) in zip(axes, panels, strict=True):
            for i, (fam, rows) in enumerate(data["curves"].items()):
                rows = sorted(rows, key=lambda r: r["fa"])
                fa = [r["fa"] for r in rows]
                hs = [r[key] for r in rows]
                xerr = [[r["fa"] - r["fa_ci"][0] for r in rows], [r["fa_ci"][1] - r["fa"] for r in rows]]
                yerr = np.clip(
                    [[r[key] - r[key + "_ci"][0] for r in rows], [r[key + "_ci"][1] - r[key] for r in rows]], 0, None
                )
                ls = "--" if fam.startswith("control") else "-"
                ax.errorbar(fa, hs, xerr=xerr, yerr=yerr, ls=ls, marker=markers[i % 7], ms=4, capsize=2, lw=1.3,
                            color=OKABE_ITO[i % len(OKABE_ITO)], label=fam)  # fmt: skip
            ax.set_xlabel("Fine-tune Accuracy (%) ↑")
            ax.set_ylabel(label)
            ax.set_xlim(-3, 103)
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
        axes[0].legend(frameon=False, fontsize=8, loc="upper left")
        fig.suptitle(
            f"HS vs FA along each method's knob (organism {data['preset']}, p = {data['p']}, "
            f"{len(data['seeds'])} seeds, 95 % CI); dashed: controls (plain L2, random subspace)"
        )
    stem = "fig_pareto" if data["p"] == P else f"fig_pareto_p{data['p']:g}"
    return [atomic_savefig(fig, out / f"{stem}.png")]


FIGURES = {  # found by ``python -m landscape.figures`` through the safety_landscape.figures entry point
    "table2_asft": (compute_table2, render_table2),
    "fig4a_lambda": (compute_lambda, render_lambda),
    "fig4b_ablation": (compute_ablation, render_ablation),
    "fig_pareto": (compute_pareto, render_pareto),
    # a heavier poison, where SFT's harm is coherent compliance rather than babble (organism v3 at p = 0.1 is not):
    # SFT's front and each regulariser at its mildest setting beside its control
    "fig_pareto_p0.3": (lambda ctx: compute_pareto(ctx, 0.3, P03_FAMILIES), render_pareto),
    "fig_trajectories": (compute_trajectories, render_trajectories),  # asft.trajectory_figure
    "fig_positive_control": (compute_positive_control, render_positive_control),  # asft.positive_control
}
