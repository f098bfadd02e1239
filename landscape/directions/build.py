"""Constructors: checkpoint differences (streamed), LoRA adapters, seeded random directions."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..provenance import model_type
from ..tensors import DifferenceStore, RandomStore, TensorStore, gaussian_tensor, open_store
from .core import Direction, StreamHasher, new_meta, stream_map


def _floating(store: TensorStore, names: list[str]) -> list[str]:
    return [n for n in names if store.dtype(n).is_floating_point]


def _check_finite(t: torch.Tensor, store: TensorStore, name: str) -> None:
    if not torch.isfinite(t).all():
        bad = "NaN" if torch.isnan(t).any() else "Inf"
        where = store.file_of(name) if hasattr(store, "file_of") else store.origin
        raise ValueError(f"{where}: tensor {name!r} contains {bad}")


def difference(
    start,
    end,
    out: str | Path | None = None,
    names: list[str] | None = None,
    kind: str = "difference",
    name: str | None = None,
    hash_sources: bool = True,
    progress: bool = False,
    lazy: bool = False,
) -> Direction:
    """d = θ_end − θ_start, streamed tensor by tensor (fp32).

    Args:
        start, end: checkpoint directories (single or sharded safetensors), state dicts, or models.
        out: write the direction to this directory as it is computed (peak memory: one shard);
            without it the direction is returned in memory.
        names: restrict to these tensors (default: every floating-point tensor of ``start``).
        kind: metadata kind ("difference", or "interpolation" for :func:`interpolation`).
        name: a label such as "d_aligned".
        hash_sources: record a content hash of both checkpoints (computed during the same pass).
        lazy: compute each tensor only when it is read (no memory, no disk, no hashes): for one-off
            geometry such as ``cosine(difference(a, b, lazy=True), a)`` on checkpoints too large to hold.

    Raises:
        KeyError / ValueError naming the file and tensor when keys, shapes or dtypes differ or a tensor
        holds NaN/Inf. Nothing is written then.
    """
    a, b = open_store(start), open_store(end)
    ka, kb = a.keys(), set(b.keys())
    if names is None:
        only_a = [n for n in ka if n not in kb]
        only_b = sorted(kb - set(ka))
        if only_a or only_b:
            which = f"{b.origin} lacks {only_a[0]!r}" if only_a else f"{a.origin} lacks {only_b[0]!r}"
            raise KeyError(f"checkpoints differ in their tensors: {which} ({len(only_a) + len(only_b)} names differ)")
        names = sorted(_floating(a, ka))
    else:
        for s in (a, b):
            have = set(s.keys())
            for n in names:
                if n not in have:
                    raise KeyError(f"{s.origin}: no tensor {n!r}")
        names = sorted(names)
    for n in names:
        if a.shape(n) != b.shape(n):
            raise ValueError(
                f"{b.origin}: tensor {n!r} has shape {list(b.shape(n))}, {a.origin} has {list(a.shape(n))}"
            )
        if a.dtype(n) != b.dtype(n):
            raise ValueError(f"{b.origin}: tensor {n!r} has dtype {b.dtype(n)}, {a.origin} has {a.dtype(n)}")
    if lazy:
        meta = new_meta(
            kind,
            name=name,
            normalization="none",
            lazy=True,
            sources=[{"path": a.origin, "role": "start"}, {"path": b.origin, "role": "end"}],
        )
        return Direction(DifferenceStore(a, b, names, check=_check_finite), meta)
    ha, hb = StreamHasher(), StreamHasher()

    def one(n: str) -> torch.Tensor:
        x, y = a.get(n), b.get(n)
        d = y.float() - x.float()
        if not torch.isfinite(d.sum()):  # NaN/Inf on either side reaches d; then find which side
            _check_finite(x, a, n)
            _check_finite(y, b, n)
        if hash_sources:
            ha.update(n, x)
            hb.update(n, y)
        return d

    def finalize(meta: dict) -> dict:
        if hash_sources:
            from ..provenance import remember

            for src, h in zip(meta["sources"], (ha, hb), strict=True):
                src["sha256"] = h.hexdigest()
                remember(src["path"], src["sha256"])
        return meta

    meta = new_meta(
        kind,
        name=name,
        sources=[
            {"path": a.origin, "role": "start", "model_type": model_type(a.origin)},
            {"path": b.origin, "role": "end", "model_type": model_type(b.origin)},
        ],
        normalization="none",
    )
    return stream_map(names, one, meta, out=out, finalize=finalize, progress=progress)


def random_like(
    reference,
    seed: int,
    out: str | Path | None = None,
    names: list[str] | None = None,
    name: str | None = None,
) -> Direction:
    """A seeded Gaussian direction shaped like ``reference`` (checkpoint, state dict or model).

    Same seed, same direction, on any device. Without ``out`` nothing is held: each tensor is drawn when it is
    read, and a perturbation can draw it on the device instead of storing it. Usually followed by
    :func:`normalize` ("layer" as Peng et al., "filter" as Li et al.), which keeps it lazy.
    """
    ref = open_store(reference)
    names = sorted(names if names is not None else _floating(ref, ref.keys()))
    meta = new_meta(
        "random",
        name=name or f"random-{seed}",
        seed=seed,
        normalization="none",
        sources=[{"path": ref.origin, "role": "shape"}],
    )
    if out is None:
        return Direction(RandomStore({n: ref.shape(n) for n in names}, seed, ref.origin), meta)
    return stream_map(names, lambda n: gaussian_tensor(n, ref.shape(n), seed), meta, out=out)


_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>A|B|embedding_A|embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
)


def _adapter_scale(cfg: dict, module: str) -> float:
    r = cfg.get("r", 8)
    alpha = cfg.get("lora_alpha", r)
    for pat, val in (cfg.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){re.escape(pat)}$", module) or re.fullmatch(pat, module):
            r = val
    for pat, val in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){re.escape(pat)}$", module) or re.fullmatch(pat, module):
            alpha = val
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _check_adapter_base(cfg_path: Path, recorded, base, allow_foreign: bool) -> str | None:
    """The base's content hash (None for an in-memory base); refuse a base other than the adapter's own."""
    from ..provenance import ForeignDirectionError, checkpoint_hash

    if base is None or not isinstance(base, (str, Path)) or not Path(base).is_dir():
        return None
    mine = checkpoint_hash(base)
    other = bool(recorded) and Path(recorded).is_dir() and Path(recorded).resolve() != Path(base).resolve()
    if other and not allow_foreign and checkpoint_hash(recorded) != mine:
        raise ForeignDirectionError(
            f"{cfg_path}: the adapter was trained on {recorded}, not on {base} (their contents differ); "
            "pass --allow_foreign_direction to use it anyway (recorded)"
        )
    return mine


def from_adapter(
    adapter_dir: str | Path,
    base=None,
    out: str | Path | None = None,
    name: str | None = None,
    allow_foreign: bool = False,
) -> Direction:
    """The update a PEFT LoRA adapter makes: ΔW = scale · B·A per adapted module (scale = α/r, or α/√r with rsLoRA).

    Args:
        adapter_dir: directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
        base: the base checkpoint (or model) to check names and shapes against; recommended.
        out: write to this directory instead of returning in memory.
        name: a label such as "d_harm".
        allow_foreign: accept a ``base`` other than the one the adapter's config records (when that one is a
            local checkpoint with other contents).

    Raises:
        ForeignDirectionError: the adapter was trained on another local checkpoint than ``base``.
    """
    d = Path(adapter_dir)
    cfg_path = d / "adapter_config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{d} is not a PEFT adapter directory: no adapter_config.json")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    if cfg.get("use_dora"):
        raise ValueError(f"{cfg_path}: DoRA adapters are not supported (their update is not scale·B·A)")
    weights = open_store(
        d / "adapter_model.safetensors" if (d / "adapter_model.safetensors").is_file() else d / "adapter_model.bin"
    )
    parts: dict[str, dict[str, str]] = {}
    for key in list(weights.keys()):
        m = _LORA_KEY.match(key)
        if m is None:
            raise ValueError(
                f"{weights.origin}: tensor {key!r} is not a LoRA A/B matrix (modules_to_save is not supported)"
            )
        parts.setdefault(m.group("module"), {})[m.group("part")] = key
    base_store = open_store(base) if base is not None else None
    base_names = set(base_store.keys()) if base_store is not None else set()
    base_sha = _check_adapter_base(cfg_path, cfg.get("base_model_name_or_path"), base, allow_foreign)
    targets = {}
    for module, p in parts.items():
        if not ({"A", "B"} <= set(p) or {"embedding_A", "embedding_B"} <= set(p)):
            raise ValueError(f"{weights.origin}: module {module!r} has only {sorted(p)}")
        param = f"{module}.weight"
        if base_store is not None and param not in base_names:
            raise KeyError(f"adapter {d} does not match base {base_store.origin}: the base has no tensor {param!r}")
        targets[param] = (module, p)

    def one(param: str) -> torch.Tensor:
        module, p = targets[param]
        scale = _adapter_scale(cfg, module)
        if "A" in p:
            delta = weights.get(p["B"]).float() @ weights.get(p["A"]).float()
            if cfg.get("fan_in_fan_out"):
                delta = delta.T
        else:
            delta = (weights.get(p["embedding_B"]).float() @ weights.get(p["embedding_A"]).float()).T
        delta = delta * scale
        if base_store is not None and tuple(delta.shape) != base_store.shape(param):
            want, got = list(base_store.shape(param)), list(delta.shape)
            raise ValueError(
                f"adapter {d} does not match base {base_store.origin}: tensor {param!r} is {want} in the base, "
                f"the adapter's update is {got}"
            )
        _check_finite(delta, weights, param)
        return delta

    meta = new_meta(
        "adapter",
        name=name,
        normalization="none",
        lora_r=cfg.get("r"),
        lora_alpha=cfg.get("lora_alpha"),
        sources=[{"path": str(d), "role": "adapter", "base_model": cfg.get("base_model_name_or_path")}]
        + (
            [{"path": base_store.origin, "role": "base", "sha256": base_sha, "model_type": model_type(base)}]
            if base_store is not None
            else []
        ),
    )
    return stream_map(sorted(targets), one, meta, out=out)
