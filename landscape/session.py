"""The one setup path every command takes: arguments shared between commands, and what they build.

Every command that runs a model (``landscape.epl``, ``landscape.scan``, ``asft.evaluate``, the figures) composes its
arguments from the dataclasses here (as trl's scripts compose ``ModelConfig`` and ``ScriptArguments``), so the
same option means the same thing everywhere, and builds its pieces through :func:`open_session`:

- the device follows ``LOCAL_RANK`` under torchrun (``cuda`` means ``cuda:LOCAL_RANK``; no ``--device`` means
  ``cuda:LOCAL_RANK`` when CUDA is there, else ``cpu``) — :func:`resolve_device`;
- the model organism when no ``--aligned`` is given (its held-out prompts, its trained judges as the default
  paths of ``guard`` / ``classifier``, its oracle beside the main judge);
- the prompts, the judge (any registered through the ``safety_landscape.judges`` entry point: ``--judge``'s
  choices are read from the registry when the command line is parsed), the generation settings;
- the backend (:mod:`landscape.backend`, by name from its registry) with its memory placement, and the memory
  plan ``--plan`` prints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .memory import PLACEMENT_CHOICES


class Choices:
    """Argument choices read from a registry when they are asked for (at parse and help time), so that names
    registered by other installed packages (entry points) are offered and accepted."""

    def __init__(self, source):
        self.source = source

    def names(self) -> list[str]:
        return list(self.source())

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, x) -> bool:
        return x in self.names()

    def __len__(self) -> int:
        return len(self.names())


def _judge_names() -> list[str]:
    from .judges import available_judges

    return list(available_judges())


def _backend_names() -> list[str]:
    from .backend import BACKENDS

    return list(BACKENDS)


JUDGE_CHOICES = Choices(_judge_names)
BACKEND_CHOICES = Choices(_backend_names)


def check_choice(what: str, value: str, choices) -> None:
    names = list(choices)
    if value not in names:
        raise ValueError(f"Unknown {what} {value!r}. Available: {', '.join(names)}")


def resolve_device(device: str | None) -> str:
    """The device this process uses: ``device`` as given, except that under torchrun (``LOCAL_RANK`` set) a bare
    ``cuda`` means ``cuda:LOCAL_RANK``; with no device, ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    import torch

    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        return f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{local}"
    return device


def ranks() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# --------------------------------------------------------------------------------------------------- arguments


@dataclass(kw_only=True)
class DeviceArgs:
    """Where the model runs."""

    device: str | None = field(
        default=None,
        metadata={"help": "torch device (cpu, cuda, cuda:1; default and under torchrun: cuda:LOCAL_RANK, else cpu)"},
    )
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bf16, fp16 or auto"})

    def check_device_args(self) -> None:
        from .loading import resolve_dtype

        resolve_dtype(self.dtype)


@dataclass(kw_only=True)
class ModelArgs(DeviceArgs):
    """The model moved through the landscape and the backend that runs it."""

    aligned: str | None = field(
        default=None, metadata={"help": "aligned checkpoint, the centre (default: the model organism)"}
    )
    backend: str = field(
        default="hf", metadata={"help": "generation backend (vllm: optional extra)", "choices": BACKEND_CHOICES}
    )
    placement: str = field(
        default="auto",
        metadata={
            "help": "where the pristine copy and the directions live: device (directions in the model dtype, "
            "random ones drawn again), device-fp32, host (streamed); auto: device if it fits",
            "choices": PLACEMENT_CHOICES,
        },
    )
    plan: bool = field(
        default=False,
        metadata={"help": "print the memory plan (bytes per placement; a bare config.json is enough) and exit"},
    )
    allow_foreign_direction: bool = field(
        default=False,
        metadata={"help": "apply directions computed from other checkpoints than --aligned (recorded in results)"},
    )
    vllm_kv_cache_bytes: int | None = field(
        default=None, metadata={"help": "vLLM KV-cache size in bytes (give it on a CPU: the default takes most RAM)"}
    )
    vllm_block_size: int | None = field(default=None, metadata={"help": "vLLM KV-cache block (CPU: a multiple of 32)"})
    vllm_max_model_len: int | None = field(default=None, metadata={"help": "vLLM: longest prompt + answer"})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM: GPUs per model"})
    vllm_enforce_eager: bool = field(default=False, metadata={"help": "vLLM: no graphs / compilation"})
    vllm_gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "vLLM's share of each GPU (default: all but one layer in flight)"}
    )

    def check_model_args(self) -> None:
        self.check_device_args()
        check_choice("backend", self.backend, BACKEND_CHOICES)
        check_choice("placement", self.placement, PLACEMENT_CHOICES)
        if self.backend == "vllm" and self.placement not in ("auto",):
            raise ValueError("--placement applies to the hf backend (vLLM workers stream every point from disk)")


@dataclass(kw_only=True)
class OrganismArgs:
    """The built-in model organism, used when no checkpoint is given."""

    preset: str = field(default="small", metadata={"help": "organism preset when no --aligned is given"})
    seed: int = field(default=0, metadata={"help": "seed: the organism's, and of every random draw of the run"})
    cache_dir: str | None = field(default=None, metadata={"help": "organism cache (default $SAFETY_LANDSCAPE_CACHE)"})


@dataclass(kw_only=True)
class PromptArgs:
    """The harmful prompts every point answers."""

    prompts: str | None = field(
        default=None, metadata={"help": "harmful prompts: AdvBench CSV, JSON/JSONL or text (organism: its own)"}
    )
    limit: int | None = field(default=80, metadata={"help": "use the first N prompts (Peng et al.: 80)"})

    def check_prompt_args(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")


@dataclass(kw_only=True)
class JudgeArgs:
    """Who decides an answer is unsafe."""

    judge: str = field(
        default="keyword", metadata={"help": "who decides an answer is unsafe", "choices": JUDGE_CHOICES}
    )
    judge_path: str | None = field(
        default=None,
        metadata={"help": "local model directory of a guard / classifier (organism: its own trained judges)"},
    )
    coherence: bool = field(
        default=True,
        metadata={
            "help": "score every answer's coherence (NLL under the centre, repetition) and report coherent ASR and "
            "the babble rate beside the judge's ASR (HF backend)"
        },
    )

    def check_judge_args(self, organism: bool) -> None:
        from .judges import judge_needs_path

        check_choice("judge", self.judge, JUDGE_CHOICES)
        if judge_needs_path(self.judge) and not self.judge_path and not organism:
            raise ValueError(f"judge {self.judge!r} needs --judge_path (a local model directory)")


@dataclass(kw_only=True)
class GenerationArgs:
    """How answers are generated."""

    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per answer"})
    batch_size: int | None = field(default=None, metadata={"help": "prompts per batch (default: all at once)"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message before every prompt"})
    static_cache: bool = field(default=False, metadata={"help": "HF generate on a static KV cache (compiled on CUDA)"})
    early_stop: bool = field(
        default=True,
        metadata={
            "help": "stop each answer once the lexical judges' verdicts on it are fixed (a refusal phrase has "
            "appeared); verdicts and ASR are those of full answers. Model judges always get full answers"
        },
    )

    def generation_settings(self):
        from .generation import GenerationSettings

        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            system_prompt=self.system_prompt,
            static_cache=self.static_cache,
        )


# ------------------------------------------------------------------------------------------------------ session


@dataclass
class Session:
    """What a command built from its arguments (see :func:`open_session`).

    Attributes:
        args: the command's arguments.
        device: the resolved device.
        rank, world_size: torchrun's, or 0 and 1.
        organism: the built organism when no checkpoint was given, else None.
        aligned, base, harmful: checkpoint paths (the organism's stages when it is used).
        prompts_path, prompts: the prompt file and its prompts.
        judge: the main judge (behind a verdict cache); extra_judges: beside it (the organism's oracle).
        settings: the generation settings.
        build_seconds: time spent building the organism (0 when cached or not used).
    """

    args: object
    device: str
    rank: int
    world_size: int
    organism: object | None
    aligned: str
    base: str | None
    harmful: str | None
    prompts_path: str | None
    prompts: list[str]
    judge: object
    extra_judges: list
    settings: object
    build_seconds: float = 0.0
    backend: object | None = None

    def evaluator(self, **kwargs):
        """The run's :class:`~landscape.scan.SafetyEvaluator`, with the coherence rule unless ``--no_coherence`` or
        the backend has no teacher-forced scores (vLLM: said on stdout)."""
        from .coherence import Coherence
        from .scan import SafetyEvaluator

        want = getattr(self.args, "coherence", False)
        scores = self.backend is None or getattr(self.backend, "supports_scores", False)
        if want and not scores and self.rank == 0:
            print(f"coherence: not scored (the {self.backend.name} backend has no teacher-forced pass)")
        if want and scores and "coherence" not in kwargs:
            system = getattr(self.settings, "system_prompt", None)
            kwargs["coherence"] = Coherence(system_prompt=system)
        if kwargs.get("metric") == "asr_coherent" and kwargs.get("coherence") is None:
            raise ValueError("--metric asr_coherent needs coherence scores: the HF backend, without --no_coherence")
        kwargs.setdefault("early_stop", getattr(self.args, "early_stop", False))
        return SafetyEvaluator(self.prompts, self.judge, self.settings, extra_judges=self.extra_judges, **kwargs)

    def open_backend(self, directions=(), out: str | Path | None = None, progress: bool = False):
        """The backend the arguments ask for: the HF model loaded on the device with its placement, or a vLLM
        engine (stored directions are saved under ``out/directions`` first, where its workers read them).
        Returns ``(backend, directions)``: the directions as the backend takes them."""
        args = self.args
        if args.backend == "vllm":
            from .directions import load_direction, save_direction
            from .loading import resolve_dtype
            from .tensors import RandomStore
            from .vllm_backend import VLLMBackend

            dtype = str(resolve_dtype(args.dtype) or "auto").removeprefix("torch.")
            backend = VLLMBackend(
                self.aligned,
                dtype=dtype,
                tensor_parallel_size=args.vllm_tensor_parallel_size,
                kv_cache_memory_bytes=args.vllm_kv_cache_bytes,
                block_size=args.vllm_block_size,
                max_model_len=args.vllm_max_model_len,
                enforce_eager=args.vllm_enforce_eager or None,
                gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            )
            saved = []
            for d in directions:
                if isinstance(d.store, RandomStore):
                    saved.append(d)
                    continue
                target = Path(out or ".") / "directions" / d.name
                if not target.exists():
                    save_direction(d, target)
                saved.append(load_direction(target))
            self.backend = backend
            return backend, saved
        from .backend import HFBackend
        from .loading import load_model

        model, tok = load_model(self.aligned, dtype=args.dtype, device=self.device)
        self.backend = HFBackend(model, tok, placement=args.placement, progress=progress)
        return self.backend, list(directions)


def organism_judge_path(org, judge: str) -> str | None:
    """The organism's trained judge of that name (``guard``, ``classifier``), if it has one."""
    return str(org.judges[judge]) if org is not None and judge in getattr(org, "judges", {}) else None


def build_judge(
    name: str, path: str | None, device: str, organism=None, model: str | None = None, world: bool | None = None
):
    """A judge by name behind a verdict cache; model judges default to the organism's trained ones.

    Every model judge, and the oracle, is checked on probe pairs first (:func:`landscape.judges.self_check`): in the
    organism's world when the run is on the organism (``organism``, or ``model`` / the judge's path inside an
    organism build, or ``world``), in plain English otherwise. The oracle judges the organism's world only: on
    another model (``model`` given and not an organism checkpoint) it is refused.
    """
    from .judges import CachedJudge, judge_needs_path, make_judge, self_check

    kwargs = {}
    if judge_needs_path(name):
        kwargs = {"path": path or organism_judge_path(organism, name), "device": device}
    judge = make_judge(name, **kwargs)
    if not (judge_needs_path(name) or name == "oracle"):
        return CachedJudge(judge)
    from .organism.judge import is_organism_path, world_probes

    if world is None:
        world = (organism is not None and getattr(organism, "synthetic", True)) or any(
            is_organism_path(p) for p in (model, kwargs.get("path"))
        )
    if name == "oracle" and not world and model is not None:
        raise ValueError(
            f"judge 'oracle' labels the synthetic organism's world only; {model} is not an organism checkpoint "
            "(use --judge refusal or a guard model with --judge_path)"
        )
    where = f" ({kwargs['path']})" if kwargs.get("path") else ""
    if world:
        self_check(judge, world_probes(), where)
    else:
        self_check(judge, where=where)
    return CachedJudge(judge)


def open_session(args, need_checkpoints: bool = True, progress: bool | None = None) -> Session:
    """Build what ``args`` (a command's arguments, composed of the dataclasses above) ask for.

    The organism is built (or reused from its cache) when no ``--aligned`` is given; the prompts default to its
    held-out set, the model judges to its trained ones, and its oracle judges beside the main judge.
    """
    from .data import load_prompts
    from .judges import make_judge

    rank, world = ranks()
    device = resolve_device(getattr(args, "device", None))
    from .loading import check_device

    check_device(device)
    progress = getattr(args, "progress", True) if progress is None else progress
    t0 = time.perf_counter()
    org = None
    aligned = getattr(args, "aligned", None)
    base, harmful = getattr(args, "base", None), getattr(args, "harmful", None)
    build_seconds = 0.0
    if aligned is None:
        from .organism import build_organism, organism_dir

        preset, seed = getattr(args, "preset", "small"), getattr(args, "seed", 0)
        fresh = not (organism_dir(preset, seed, args.cache_dir) / "benign" / "stage.json").is_file()
        if fresh and rank == 0:
            print(f"building the model organism ({preset}) once; later runs reuse it from the cache")
        org = build_organism(preset, seed=seed, cache_dir=args.cache_dir, progress=progress)
        build_seconds = time.perf_counter() - t0
        aligned, base, harmful = str(org["aligned"]), str(org["base"]), str(org[org.harm_stage])
    elif need_checkpoints:
        from .gguf import resolve_checkpoint
        from .loading import check_model_dir

        aligned = str(check_model_dir(aligned))  # a GGUF checkpoint becomes its converted directory
        base = str(resolve_checkpoint(base)) if base and Path(base).exists() else base
        harmful = str(resolve_checkpoint(harmful)) if harmful and Path(harmful).exists() else harmful
    prompts_path = getattr(args, "prompts", None) or (str(org.eval_prompts_csv) if org is not None else None)
    if prompts_path is None:
        raise ValueError("--prompts is required with --aligned (AdvBench CSV, JSON/JSONL or text)")
    prompts = load_prompts(prompts_path, limit=getattr(args, "limit", None))
    judge_name = getattr(args, "judge", "keyword")
    judge = build_judge(judge_name, getattr(args, "judge_path", None), device, org, model=aligned)
    synthetic = org is not None and org.synthetic  # the oracle reads the synthetic world only
    extra = [make_judge("oracle")] if synthetic and judge_name != "oracle" else []
    settings = args.generation_settings() if hasattr(args, "generation_settings") else None
    return Session(
        args=args,
        device=device,
        rank=rank,
        world_size=world,
        organism=org,
        aligned=aligned,
        base=base,
        harmful=harmful,
        prompts_path=prompts_path,
        prompts=prompts,
        judge=judge,
        extra_judges=extra,
        settings=settings,
        build_seconds=build_seconds,
    )


# --------------------------------------------------------------------------------------------------------- plans


@dataclass
class PlanReport:
    """What ``--plan`` prints: the bytes of every placement for the run's directions, and the pick.

    Attributes:
        model: the checkpoint (or config) planned for.
        dtype: the model dtype planned for.
        device: the device.
        plans: placement name -> :class:`~landscape.memory.MemoryPlan`.
        pick: the placement ``auto`` would take.
        free_device: free bytes on the device (None on a CPU).
        generation: a rough estimate of what generating one batch holds.
        note: what the directions planned for are.
    """

    model: str
    dtype: str
    device: str
    plans: dict
    pick: str
    free_device: int | None
    generation: int
    note: str

    def lines(self) -> list[str]:
        from .memory import gib

        first = next(iter(self.plans.values()))
        out = [
            f"memory plan for {self.model} ({self.dtype}, {gib(first.model_bytes)} of weights) on {self.device}: "
            f"{self.note}",
            f"{'placement':<12} {'device':>12} {'x model':>8} {'host':>12} {'x model':>8}",
        ]
        for name, p in self.plans.items():
            out.append(
                f"{name:<12} {gib(p.device_bytes):>12} {p.ratio(p.device_bytes):>8.2f} {gib(p.host_bytes):>12} "
                f"{p.ratio(p.host_bytes):>8.2f}"
            )
        where = (
            "the CPU's memory holds device and host bytes alike"
            if first.same_memory
            else (
                f"free on the device: {gib(self.free_device)}"
                if self.free_device is not None
                else "free memory unknown"
            )
        )
        out.append(f"generation (one batch, rough): {gib(self.generation)}; {where}")
        out.append(f"placement auto would pick: {self.pick}")
        return out


def model_shapes(path: str | Path, dtype: str) -> tuple[dict[str, tuple[int, ...]], str, object]:
    """Parameter shapes of the model at ``path`` (a checkpoint directory, a directory holding only a config.json, or
    the config.json itself), built on the meta device (no weights are read); the dtype the run would load it in
    (``auto``: the config's); the config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .gguf import gguf_file, resolve_checkpoint
    from .loading import resolve_dtype

    p = Path(path)
    if p.exists() and gguf_file(p) is not None:
        p = resolve_checkpoint(p)
    cfg_dir = p.parent if p.is_file() and p.name.endswith(".json") else p
    if not (cfg_dir / "config.json").is_file():
        raise ValueError(f"{path}: no config.json to plan from")
    cfg = AutoConfig.from_pretrained(cfg_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    chosen = resolve_dtype(dtype)
    if chosen is None:
        chosen = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
        chosen = resolve_dtype(str(chosen).removeprefix("torch.")) if not isinstance(chosen, torch.dtype) else chosen
    shapes = {n: tuple(t.shape) for n, t in model.named_parameters()}
    return shapes, str(chosen).removeprefix("torch."), cfg


def planned_direction(name: str, shapes: dict[str, tuple[int, ...]], regenerable: bool, tensors=None):
    """A :class:`~landscape.memory.DirectionSpec` for a direction not yet computed: every floating tensor but the
    normalisation layers (the default blacklist), or the given ``tensors``."""
    import re

    from .directions.normalization import DEFAULT_BLACKLIST
    from .memory import DirectionSpec

    if tensors is None:
        tensors = [n for n in shapes if not any(re.search(b, n) for b in DEFAULT_BLACKLIST)]
    return DirectionSpec(name, tuple(tensors), regenerable)


def memory_plan(args, attaches: list[list], note: str, batch: int) -> PlanReport:
    """The plan of a run whose perturbation attaches each list of :class:`~landscape.memory.DirectionSpec` in
    ``attaches`` in turn (the EPL search: one direction at a time; a 2D scan: two at once): per placement, the
    largest of them."""
    from .memory import PLACEMENTS, choose_placement, free_device_bytes, generation_bytes, perturbation_plan

    model = args.aligned
    shapes, dtype, cfg = model_shapes(model, args.dtype)
    device = resolve_device(getattr(args, "device", None))
    same = not device.startswith("cuda")
    plans = {}
    for name in PLACEMENTS:
        candidates = [perturbation_plan(shapes, dtype, specs, name, same) for specs in attaches]
        plans[name] = max(candidates, key=lambda p: p.device_bytes + p.host_bytes)
    free = None
    if not same:
        import torch

        free = free_device_bytes(device) if torch.cuda.is_available() else None
    seq = 256 + getattr(args, "max_new_tokens", 32)
    gen = generation_bytes(cfg, batch, seq, dtype)
    pick = args.placement if args.placement != "auto" else choose_placement(plans, free, reserve=gen)
    return PlanReport(str(model), dtype, device, plans, pick, free, gen, note)
