"""The :class:`Direction` type, its storage as safetensors, and the streaming map every constructor uses."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import dumps, loads
from ..tensors import MemoryStore, SafetensorsStore, ShardWriter, TensorStore, get_flat

META_KEY = "landscape_direction"
FILE_PREFIX = "direction"
DEFAULT_SHARD_BYTES = 1 << 30


def toolkit_version() -> str:
    try:
        from importlib.metadata import version

        return version("safety-landscape")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


@dataclass
class Direction:
    """A direction in weight space: parameter name -> tensor, plus metadata.

    The tensors live in a :class:`~landscape.tensors.TensorStore`: in memory, or lazily in safetensors
    shards on disk (read one tensor at a time). Metadata records the kind ("difference", "adapter",
    "random", "interpolation", "normalized", "orthogonalized"), the checkpoints it came from with a
    content hash of each, the normalisation, the seed and the toolkit version.
    """

    store: TensorStore
    meta: dict = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # tied name -> stored name

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.meta.get("kind", "direction")

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "unknown")

    def names(self) -> list[str]:
        return self.store.keys()

    def get(self, name: str) -> torch.Tensor:
        return self.store.get(self.aliases.get(name, name))

    def shape(self, name: str) -> tuple[int, ...]:
        return self.store.shape(self.aliases.get(name, name))

    def get_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        return get_flat(self.store, self.aliases.get(name, name), start, stop)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for n in self.names():
            yield n, self.store.get(n)

    def __len__(self) -> int:
        return len(self.names())

    def numel(self) -> int:
        total = 0
        for n in self.names():
            k = 1
            for s in self.store.shape(n):
                k *= s
            total += k
        return total

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = torch.float32) -> Direction:
        """An in-memory copy on ``device`` (the whole direction is read)."""
        tensors = {n: t.to(device=device, dtype=dtype) for n, t in self.items()}
        return Direction(MemoryStore(tensors, self.store.origin), dict(self.meta), dict(self.aliases))

    def scaled(self, c: float, name: str | None = None) -> Direction:
        tensors = {n: t.float() * c for n, t in self.items()}
        meta = {**self.meta, "scale": self.meta.get("scale", 1.0) * c}
        if name:
            meta["name"] = name
        return Direction(MemoryStore(tensors, self.store.origin), meta, dict(self.aliases))

    def __neg__(self) -> Direction:
        return self.scaled(-1.0, name=f"-{self.name}")

    def with_name(self, name: str) -> Direction:
        return Direction(self.store, {**self.meta, "name": name}, dict(self.aliases))


def new_meta(kind: str, **extra) -> dict:
    return {"kind": kind, "version": toolkit_version(), **{k: v for k, v in extra.items() if v is not None}}


class StreamHasher:
    """Content hash of a checkpoint's tensors, fed in sorted-name order while they are streamed anyway."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def update(self, name: str, t: torch.Tensor) -> None:
        self.h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        self.h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy())

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def content_hash(store: TensorStore, names: list[str] | None = None) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in sorted-name order."""
    h = StreamHasher()
    for n in sorted(names if names is not None else store.keys()):
        h.update(n, store.get(n))
    return h.hexdigest()


def stream_map(
    names: list[str],
    fn: Callable[[str], torch.Tensor],
    meta: dict,
    out: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    finalize: Callable[[dict], dict] | None = None,
    progress: bool = False,
) -> Direction:
    """Build a direction tensor by tensor: ``fn(name)`` for each name, kept in memory or written to ``out``.

    With ``out``, tensors are written to shards as they come (peak memory: one shard) and the
    directory appears only when every tensor is done; an error leaves nothing behind. ``finalize``
    may add metadata known only at the end (content hashes computed during the stream).
    """
    from tqdm.auto import tqdm

    writer = ShardWriter(out, FILE_PREFIX, max_shard_bytes) if out is not None else None
    tensors: dict[str, torch.Tensor] = {}
    try:
        for n in tqdm(names, desc=meta.get("kind", "direction"), disable=not progress, leave=False):
            t = fn(n)
            if writer is not None:
                writer.add(n, t)
            else:
                tensors[n] = t
        if finalize is not None:
            meta = finalize(meta)
        if writer is not None:
            writer.finish({META_KEY: dumps(meta, sort_keys=True)})
            return load_direction(out)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return Direction(MemoryStore(tensors), meta)


def save_direction(direction: Direction, path: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write ``direction`` to the directory ``path`` as safetensors (sharded past ``max_shard_bytes``).

    The metadata is JSON in every shard's header. Tensors that share memory (tied weights) are stored
    once and recorded as aliases. The directory appears atomically.
    """
    seen: dict[tuple[int, int, tuple], str] = {}
    aliases = dict(direction.aliases)
    names = []
    for n in direction.names():
        t = direction.store.get(n)
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            aliases[n] = seen[key]
        else:
            seen[key] = n
            names.append(n)
    meta = {**direction.meta, "aliases": aliases} if aliases else dict(direction.meta)
    stream_map(names, direction.store.get, meta, out=path, max_shard_bytes=max_shard_bytes)
    return Path(path)


def load_direction(path: str | Path) -> Direction:
    """Open a saved direction lazily (tensors are read when asked for)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Direction {str(p)!r} does not exist")
    store = SafetensorsStore(p)
    raw = store.metadata.get(META_KEY)
    if raw is None:
        raise ValueError(f"{p} is not a saved direction: no {META_KEY!r} metadata in its safetensors header")
    meta = loads(raw)
    return Direction(store, meta, dict(meta.get("aliases", {})))
