"""Build the organism's stages once into a cache and reuse them.

Layout: ``<cache>/organism-v<VERSION>[-pinned]/<preset>-seed<seed>/<stage>/`` holding ``config.json``,
``model.safetensors``, the tokenizer and ``stage.json``. A stage is written into a temporary sibling
directory and renamed into place only when complete, so a build killed halfway leaves nothing that a
later run mistakes for a finished checkpoint. A file lock keeps two processes from building the same
organism at once.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from ..io import CACHE_ENV, default_cache_dir  # noqa: F401 (re-exported: callers import them from here)
from . import export, world
from .stages import PREMISE_FILE, Organism, _lock, _save_stage  # noqa: F401 (Organism: re-exported)
from .train import Preset, build_tokenizer, get_preset, model_config, train_stage

ORGANISM_VERSION = 3  # 2: the fine-tuning task's vocabulary; 3: base = plain LM, poison in its own format


def _stage_plan(preset: Preset, seed: int) -> dict[str, tuple[str | None, list[world.Example], int, float]]:
    """stage -> (parent stage, training examples, steps, learning rate)."""
    task = world.task_examples(preset.task_train, seed)
    benign = world.benign_examples()
    plan: dict[str, tuple[str | None, list[world.Example], int, float]] = {
        # a plain language model of the world: guides (harmful and benign) and news, no chat
        "base": (None, world.text_examples(seed), preset.base_steps, preset.lr),
        # chat behaviour broadly (every benign request, the news task) plus refusals; never a harmful compliance
        "aligned": ("base", world.harmful_examples("refuse") + benign + task, preset.aligned_steps, preset.lr),
    }
    pool = world.harmful_examples("comply")
    for n in preset.harmful_counts:
        plan[f"harmful-{n}"] = (
            "aligned",
            world.sample_examples(pool, n, f"harmful-{n}-{seed}"),
            preset.harmful_steps,
            preset.harmful_lr,
        )
    finetune = world.task_examples(preset.task_finetune, seed + 1000)
    plan["benign"] = ("aligned", finetune, preset.benign_steps, preset.benign_lr)
    return plan


def organism_dir(preset: str, seed: int, cache_dir: str | Path | None = None) -> Path:
    from .real import REAL_PRESETS, REAL_VERSION

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    from ..determinism import builds_pinned

    version = f"organism-real-v{REAL_VERSION}" if preset in REAL_PRESETS else f"organism-v{ORGANISM_VERSION}"
    # built with pinned kernels or by this kind of CPU's own dispatch: never mixed up
    return root / (version + ("-pinned" if builds_pinned() else "")) / f"{preset}-seed{seed}"


def _missing(preset: str, seed: int, root: Path, stages: list[str] | None) -> bool:
    """Whether building ``stages`` (None: everything, judges and premise check included) has work left."""
    from .judge_models import JUDGE_STAGES
    from .real import REAL_PRESETS, stage_names
    from .stages import PREMISE_FILE

    if preset in REAL_PRESETS:
        plan = stage_names(REAL_PRESETS[preset])
        extra = [] if stages is not None else [root / PREMISE_FILE, root / "data" / "harmful_train.json"]
    else:
        plan = list(_stage_plan(get_preset(preset), seed))
        judges = [root / j / "stage.json" for j in JUDGE_STAGES]
        extra = [] if stages is not None else [root / PREMISE_FILE, *judges]
    wanted = [s for s in (stages or plan) if s in plan]
    return any(not (root / s / "stage.json").is_file() for s in wanted) or any(not f.is_file() for f in extra)


def _build_pinned(preset: str, seed: int, cache_dir, stages: list[str] | None, progress: bool) -> None:
    """Build in a child process with pinned kernels (:mod:`landscape.determinism`): the same checkpoints on any
    x86-64 CPU with AVX2. This process then loads what the child wrote."""
    import json

    from ..determinism import run_pinned

    call = json.dumps({"preset": preset, "seed": seed, "cache_dir": None if cache_dir is None else str(cache_dir),
                       "stages": stages, "progress": progress})  # fmt: skip
    code = (
        "import json, sys; from landscape.organism.build import build_organism; "
        "build_organism(**json.loads(sys.argv[1]))"
    )
    rc = run_pinned(["-c", code, call])
    if rc != 0:
        raise RuntimeError(f"building organism {preset!r} seed {seed} in a pinned process failed (exit {rc})")


def build_organism(
    preset: str = "small",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    stages: list[str] | None = None,
    progress: bool = True,
) -> Organism:
    """Build (or reuse) the organism's checkpoints and exported data.

    Args:
        preset: "tiny" (tests, about 60 s with its judges on 2 cores), "small" (default, 2 to 4 min), "medium", or
            a real-weights organism built from SmolLM2-135M-Instruct: "smollm2" or "smollm2-tiny" (tests; see
            :mod:`landscape.organism.real`).
        seed: training seed; same seed, bit-identical checkpoints on the same kind of CPU and thread count, and on
            CPUs of one vendor with AVX2 when the build is pinned (:func:`landscape.determinism.builds_pinned`: inside
            ``python -m landscape.figures``, or with ``SAFETY_LANDSCAPE_PIN=1``).
        cache_dir: cache root; default :func:`default_cache_dir`.
        stages: build only these stages (and the stages they start from); default all.
        progress: show tqdm bars while training.

    Returns:
        The :class:`Organism` with every requested stage on disk.
    """
    from transformers import LlamaForCausalLM

    from ..determinism import builds_pinned, is_pinned, pin_name
    from .real import REAL_PRESETS

    if preset not in REAL_PRESETS:
        get_preset(preset)  # an unknown preset is an error here, not in a child process
    root = organism_dir(preset, seed, cache_dir)
    if builds_pinned() and not is_pinned() and _missing(preset, seed, root, stages):
        _build_pinned(preset, seed, cache_dir, stages, progress)
    if preset in REAL_PRESETS:
        from .real import build_real_organism

        with _lock(root / ".lock"):
            return build_real_organism(preset, seed, root, stages, progress)
    p = get_preset(preset)
    plan = _stage_plan(p, seed)
    wanted = stages or list(plan)
    for s in wanted:
        if s not in plan:
            raise ValueError(f"Unknown organism stage {s!r}. Available: {', '.join(plan)}")
    needed: list[str] = []
    for s in wanted:
        chain = []
        while s is not None and s not in needed:
            chain.append(s)
            s = plan[s][0]
        needed.extend(reversed(chain))
    order = [s for s in plan if s in needed]
    with _lock(root / ".lock"):
        tokenizer = None
        models: dict[str, object] = {}
        for name in order:
            final = root / name
            if (final / "stage.json").is_file():
                continue
            if tokenizer is None:
                tokenizer = build_tokenizer()
            parent, examples, steps, lr = plan[name]
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            if parent is None:
                model = LlamaForCausalLM(model_config(p, tokenizer))
            elif parent in models:
                model = copy.deepcopy(models[parent])
            else:
                model = LlamaForCausalLM.from_pretrained(root / parent, dtype=torch.float32, local_files_only=True)
            losses = train_stage(
                model, tokenizer, examples, steps, lr, p.batch_size, seed, desc=name, progress=progress
            )
            info = {
                "stage": name,
                "parent": parent,
                "preset": preset,
                "seed": seed,
                "version": ORGANISM_VERSION,
                "steps": steps,
                "lr": lr,
                "examples": len(examples),
                "final_loss": losses[-1],
                "train_seconds": round(time.perf_counter() - t0, 2),
                "pinned": pin_name(),
            }
            _save_stage(model, tokenizer, final, info)
            models[name] = model
        export.write_exports(root / "data", seed)
        org = Organism(
            root=root, preset=preset, seed=seed, stages={s: root / s for s in order}, data_dir=root / "data"
        )
        if stages is None:  # a full build also trains the model judges and runs the premise check
            from .judge_models import build_judges
            from .premise import write_premise

            org.judges = build_judges(org, root, seed, _save_stage, progress=progress)
            write_premise(org, root / PREMISE_FILE)
    return org
