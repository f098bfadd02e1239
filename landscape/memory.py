"""Where a perturbation keeps its bytes, and how many: the memory plan every backend follows and prints.

Moving a model to θ₀ + Σ cᵢ·dᵢ and back bit for bit needs a pristine copy of every touched tensor and the
directions. A *placement* says where each lives:

- ``device-fp32``: pristine copy and directions on the model's device, directions in fp32 (the layout before
  placements existed: the most precise for a bf16 model, and the most memory: 1 + 2 per direction × the model's
  bytes for bf16);
- ``device``: both on the device, directions in the model's dtype, seeded random directions drawn again on the
  device from their seed at every point instead of stored (1 + 1 per stored direction);
- ``host``: pristine copy and stored directions in host memory (pinned on CUDA) and streamed to the device block by
  block at every point; seeded random directions drawn on the device. The device holds only scratch blocks.

Every placement computes each block of θ in fp32 in one scratch buffer and casts once. A plan
(:func:`perturbation_plan`) counts the bytes each placement holds beyond the loaded model, on the device and on
the host, from tensor shapes alone (a checkpoint's headers or a ``config.json`` on the meta device), so
``--plan`` can say before loading anything whether a run fits. On a CPU the device *is* the host: a plan's
device and host bytes add up to what the process holds beyond the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from .tensors import blocks

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class Placement:
    """Where the pristine copy and the directions live, and in which dtype.

    Attributes:
        name: the placement's name (``device-fp32``, ``device``, ``host``).
        pristine: ``device`` or ``host``.
        directions: ``device`` or ``host`` (stored directions).
        direction_dtype: ``model`` (the model's dtype) or ``float32``.
        regenerate_random: draw seeded random directions again on the device instead of storing them.
    """

    name: str
    pristine: str
    directions: str
    direction_dtype: str
    regenerate_random: bool
    help: str = ""


PLACEMENTS: dict[str, Placement] = {
    p.name: p
    for p in (
        Placement(
            "device", "device", "device", "model", True, "everything on the device, directions in the model dtype"
        ),
        Placement("device-fp32", "device", "device", "float32", False, "everything on the device, fp32 directions"),
        Placement("host", "host", "host", "model", True, "pristine copy and directions in host memory, streamed"),
    )
}
PLACEMENT_CHOICES = ("auto", *PLACEMENTS)


def get_placement(name: str | Placement) -> Placement:
    if isinstance(name, Placement):
        return name
    if name not in PLACEMENTS:
        raise ValueError(f"Unknown placement {name!r}. Available: {', '.join(PLACEMENT_CHOICES)}")
    return PLACEMENTS[name]


@dataclass(frozen=True)
class DirectionSpec:
    """What a plan needs to know of a direction: the tensors it moves and whether it can be drawn again."""

    name: str
    tensors: tuple[str, ...]
    regenerable: bool = False


def describe_direction(d) -> DirectionSpec:
    """The :class:`DirectionSpec` of a :class:`~landscape.directions.Direction`: its tensors less those a
    normalisation blacklisted (zero), and whether it is a seeded random one that can be drawn again."""
    from .tensors import RandomStore

    zero = set(d.meta.get("blacklist") or ())
    return DirectionSpec(d.name, tuple(n for n in d.names() if n not in zero), isinstance(d.store, RandomStore))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


@dataclass
class MemoryPlan:
    """Bytes a perturbation holds beyond the loaded model under one placement.

    Attributes:
        placement: the placement's name.
        model_bytes: the loaded model's parameters (tied tensors once).
        device_bytes: held on the model's device (pristine, directions, scratch, as placed).
        host_bytes: held in host memory.
        same_memory: the device is the host (a CPU run): the two add up.
        stored_directions, regenerated_directions: how many directions are kept, how many drawn at every point.
        parts: the bytes by part (``pristine``, ``directions``, ``scales``, ``scratch``).
    """

    placement: str
    model_bytes: int
    device_bytes: int
    host_bytes: int
    same_memory: bool
    stored_directions: int
    regenerated_directions: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.device_bytes + self.host_bytes

    def ratio(self, nbytes: int) -> float:
        return nbytes / self.model_bytes if self.model_bytes else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "device_over_model": round(self.ratio(self.device_bytes), 4),
            "host_over_model": round(self.ratio(self.host_bytes), 4),
            "total_over_model": round(self.ratio(self.total_bytes), 4),
        }

    def line(self) -> str:
        """One line: what this placement holds (printed before the first point)."""
        where = "memory (CPU: device and host are one)" if self.same_memory else "device"
        host = "" if self.same_memory else f" + host {gib(self.host_bytes)} ({self.ratio(self.host_bytes):.2f}x)"
        return (
            f"placement {self.placement}: {where} {gib(self.device_bytes)} ({self.ratio(self.device_bytes):.2f}x the "
            f"model's {gib(self.model_bytes)}){host} beyond the model; {self.stored_directions} direction(s) stored, "
            f"{self.regenerated_directions} drawn again at every point"
        )


def scratch_bytes(shapes: Sequence[Sequence[int]], model_dtype, drawn: bool, converted: bool) -> int:
    """The perturbation's scratch blocks (each as large as the largest block of a touched tensor): θ's block in
    fp32; a drawn random direction's block; a stored block converted to fp32 (directions kept in another dtype
    or on the host); and, for a model not in fp32, the two masks of the resolution check."""
    biggest = max((b - a for s in shapes for a, b in blocks(tuple(s))), default=0)
    low = str(model_dtype).removeprefix("torch.") != "float32"
    fp32_slots = 1 + drawn + (converted or low)
    return biggest * (4 * fp32_slots + (2 if low else 0))


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def perturbation_plan(
    shapes: dict[str, Sequence[int]],
    model_dtype: str,
    directions: Iterable[DirectionSpec],
    placement: str | Placement,
    same_memory: bool,
    aliases: dict[str, str] | None = None,
) -> MemoryPlan:
    """Count what :class:`~landscape.perturb.Perturbation` will hold under ``placement``.

    Args:
        shapes: the model's parameters (name -> shape; tied parameters once).
        model_dtype: the model's dtype name (``bfloat16``, ``float32``, ...).
        directions: what each direction moves.
        placement: the placement (or its name).
        same_memory: the device is the host (CPU).
        aliases: direction tensor name -> the model parameter it moves (tied or prefixed names).
    """
    p = get_placement(placement)
    aliases = aliases or {}
    elem = BYTES[model_dtype.removeprefix("torch.")]
    delem = elem if p.direction_dtype == "model" else 4
    specs = list(directions)
    numel = {n: _numel(s) for n, s in shapes.items()}
    model_bytes = sum(numel.values()) * elem
    touched: set[str] = set()
    stored = regen = 0
    dir_bytes = scale_bytes = 0
    for d in specs:
        names = {aliases.get(n, n) for n in d.tensors if aliases.get(n, n) in numel}
        touched |= names
        if d.regenerable and p.regenerate_random:
            regen += 1
            scale_bytes += sum(4 * (int(shapes[n][0]) if len(shapes[n]) > 1 else 1) for n in names)
        else:
            stored += 1
            dir_bytes += sum(numel[n] for n in names) * delem
    pristine = sum(numel[n] for n in touched) * elem
    scratch = scratch_bytes(
        [tuple(shapes[n]) for n in touched],
        model_dtype,
        drawn=bool(regen),
        converted=bool(stored) and (delem != 4 or p.directions == "host"),
    )
    if (p.pristine == "host" or p.directions == "host") and not same_memory:
        biggest = max((b - a for n in touched for a, b in blocks(tuple(shapes[n]))), default=0)
        scratch += biggest * max(elem, delem)  # a block in transit from the host
    on_device = {"pristine": pristine if p.pristine == "device" else 0, "scratch": scratch, "scales": scale_bytes}
    on_device["directions"] = dir_bytes if p.directions == "device" else 0
    on_host = (pristine if p.pristine == "host" else 0) + (dir_bytes if p.directions == "host" else 0)
    return MemoryPlan(
        placement=p.name,
        model_bytes=model_bytes,
        device_bytes=sum(on_device.values()),
        host_bytes=on_host,
        same_memory=same_memory,
        stored_directions=stored,
        regenerated_directions=regen,
        parts={"pristine": pristine, "directions": dir_bytes, "scales": scale_bytes, "scratch": scratch},
    )


AUTO_ORDER = ("device", "host")  # device-fp32 only when asked for: it is a precision choice, not a memory one


def choose_placement(
    plans: dict[str, MemoryPlan], free_device: int | None, reserve: int = 0, free_host: int | None = None
) -> str:
    """The first placement of :data:`AUTO_ORDER` whose device bytes (plus ``reserve`` for generation) fit in
    ``free_device`` bytes. On a CPU (``same_memory``) the host holds the same bytes under every placement, and
    drawing a random direction again costs more than reading it (about 7 s a point for 1B fp32 parameters on 2
    cores, against 0.9 s stored; ``benchmarks/RESULTS.md``): ``device-fp32`` (random directions stored) when its
    bytes fit in half of ``free_host`` (the available RAM, read when not given), else ``device``."""
    first = next(iter(plans.values()))
    if first.same_memory or free_device is None:
        free_host = available_host_bytes() if free_host is None else free_host
        stored = plans.get("device-fp32")
        if stored is not None and free_host is not None and stored.total_bytes + reserve <= free_host // 2:
            return "device-fp32"
        return "device"
    for name in AUTO_ORDER:
        if plans[name].device_bytes + reserve <= free_device:
            return name
    return "host"


def available_host_bytes() -> int | None:
    """Memory the host can still give (``MemAvailable``; None where the system does not say)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def free_device_bytes(device) -> int | None:
    """Free memory of a CUDA device (None on a CPU: the host's memory is the limit, and the plan says it)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free)


def generation_bytes(config, batch: int, seq: int, model_dtype: str) -> int:
    """A rough upper estimate of what generating ``batch`` answers of ``seq`` tokens (prompt + answer) holds: the KV
    cache, full-vocabulary fp32 logits of one step (twice: the processors copy them) and one layer's activations."""
    elem = BYTES[model_dtype.removeprefix("torch.")]
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 1) or 1
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    inter = getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden
    vocab = getattr(config, "vocab_size", 0) or 0
    cache = 2 * layers * batch * seq * kv * head_dim * elem
    logits = 2 * batch * vocab * 4
    act = batch * seq * (3 * hidden + 2 * inter) * elem
    return int(cache + logits + act)
