"""Named-tensor stores that stream: a checkpoint directory, a state dict, or a live model.

Everything that walks a model's parameters (differences, norms, cosines, normalisation) goes through
:class:`TensorStore`, one tensor at a time, so that peak memory is a few tensors and never a model.
Safetensors files are read one tensor at a time at their header offsets; sharded checkpoints are found through their
``*.safetensors.index.json``. Pickled ``.bin`` checkpoints are read only with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import save_file

from .io import atomic_write_text


@runtime_checkable
class TensorStore(Protocol):
    """Read-only access to named tensors, one at a time."""

    origin: str

    def keys(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> torch.dtype: ...


class MemoryStore:
    """Tensors held in a dict (a state dict, or an in-memory direction)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], origin: str = "<memory>"):
        self.tensors = dict(tensors)
        self.origin = origin

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self.tensors[name].dtype

    def get_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.tensors[name].reshape(-1)[start:stop]


class ModuleStore(MemoryStore):
    """The parameters of a live ``nn.Module``; tied parameters appear once (under their first name)."""

    def __init__(self, module: torch.nn.Module, origin: str | None = None):
        name = getattr(getattr(module, "config", None), "_name_or_path", "") or type(module).__name__
        super().__init__({n: p.detach() for n, p in module.named_parameters()}, origin or f"<model {name}>")


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "BOOL": torch.bool,
}


def _read_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (bad header length)")
        try:
            return json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from e


class SafetensorsStore:
    """A safetensors checkpoint: a directory (single file or sharded with an index) or one ``.safetensors`` file.

    Shapes and dtypes come from the headers without reading any tensor.
    """

    def __init__(self, path: str | Path):
        p = Path(path)
        self.origin = str(p)
        self.files: dict[str, Path] = {}  # tensor name -> file
        self.metadata: dict[str, str] = {}
        self._headers: dict[Path, dict] = {}
        if p.is_file():
            shards = [p]
        elif p.is_dir():
            index = sorted(p.glob("*.safetensors.index.json"))
            if index:
                try:
                    weight_map = json.loads(index[0].read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{index[0]}: not a safetensors index ({e})") from e
                shards = sorted({p / f for f in weight_map.values()})
                missing = [s for s in shards if not s.is_file()]
                if missing:
                    raise FileNotFoundError(f"{index[0]} names shard {missing[0].name}, which is missing")
            else:
                shards = sorted(p.glob("*.safetensors"))
            if not shards:
                raise ValueError(f"{p} is not a checkpoint: no *.safetensors files in it")
        else:
            raise FileNotFoundError(f"Checkpoint {str(p)!r} does not exist")
        self._header_len: dict[Path, int] = {}
        for shard in shards:
            header = _read_header(shard)
            with open(shard, "rb") as fh:
                self._header_len[shard] = int.from_bytes(fh.read(8), "little")
            self.metadata.update(header.pop("__metadata__", None) or {})
            self._headers[shard] = header
            for name in header:
                self.files[name] = shard
        self._last: tuple[str, torch.Tensor] | None = None

    def keys(self) -> list[str]:
        return list(self.files)

    def _entry(self, name: str) -> dict:
        if name not in self.files:
            raise KeyError(f"{self.origin}: no tensor {name!r}")
        return self._headers[self.files[name]][name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)["shape"])

    def dtype(self, name: str) -> torch.dtype:
        code = self._entry(name)["dtype"]
        if code not in _DTYPES:
            raise ValueError(f"{self.files[name]}: tensor {name!r} has unsupported dtype {code}")
        return _DTYPES[code]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into fresh memory.

        The bytes are read at the header's offsets with one ``readinto``, not through ``safe_open``: that maps
        a whole shard and keeps it mapped, so every page a pass touches counts towards resident memory.
        """
        # One tensor is kept: streaming passes often read the same tensor twice in a row (a lazy
        # difference, then the reference it is compared with).
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        self._last = None  # let the previous tensor go before the next one is allocated
        t = self.get_flat(name, 0, _numel(self.shape(name))).reshape(self.shape(name))
        self._last = (name, t)
        return t

    def get_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements ``start:stop`` of the flattened tensor, read from the file alone."""
        entry = self._entry(name)
        f = self.files[name]
        dtype = self.dtype(name)
        item = torch.empty(0, dtype=dtype).element_size()
        begin = entry["data_offsets"][0] + start * item
        buf = bytearray((stop - start) * item)
        with open(f, "rb") as fh:
            fh.seek(8 + self._header_len[f] + begin)
            if fh.readinto(buf) != len(buf):
                raise ValueError(f"{f}: file is truncated (tensor {name!r} runs past its end)")
        return torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)

    def file_of(self, name: str) -> Path:
        return self.files[name]


class TorchBinStore(MemoryStore):
    """A pickled ``pytorch_model.bin`` checkpoint, read with ``weights_only=True`` (never arbitrary code)."""

    def __init__(self, path: str | Path):
        p = Path(path)
        files = sorted(p.glob("pytorch_model*.bin")) if p.is_dir() else [p]
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        super().__init__(tensors, str(p))


def open_store(obj) -> TensorStore:
    """A :class:`TensorStore` for a checkpoint path, a state dict, a model, or a store (returned as is)."""
    if isinstance(obj, TensorStore):
        return obj
    if isinstance(obj, torch.nn.Module):
        return ModuleStore(obj)
    if isinstance(obj, Mapping):
        return MemoryStore(obj)
    if isinstance(obj, (str, Path)):
        p = Path(obj)
        if not p.exists():
            raise FileNotFoundError(f"Checkpoint {str(p)!r} does not exist")
        from .gguf import resolve_checkpoint

        p = resolve_checkpoint(p)
        if p.is_dir() and not any(p.glob("*.safetensors")) and any(p.glob("pytorch_model*.bin")):
            return TorchBinStore(p)
        return SafetensorsStore(p)
    raise TypeError(f"Cannot read tensors from {type(obj).__name__}: give a path, a state dict or a model")


class DifferenceStore:
    """θ_end − θ_start computed when a tensor is asked for: a direction that costs no memory and no disk."""

    def __init__(self, start: TensorStore, end: TensorStore, names: list[str], check: Callable | None = None):
        self.a, self.b, self.names = start, end, list(names)
        self.origin = f"{end.origin} - {start.origin}"
        self.check = check

    def keys(self) -> list[str]:
        return list(self.names)

    def get(self, name: str) -> torch.Tensor:
        return self._diff(self.a.get(name), self.b.get(name), name)

    def get_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._diff(self.a.get_flat(name, start, stop), self.b.get_flat(name, start, stop), name)

    def _diff(self, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
        d = y.float() - x.float()
        if self.check is not None and not torch.isfinite(d.sum()):  # NaN/Inf in either side reaches d
            self.check(x, self.a, name)
            self.check(y, self.b, name)
        return d

    def shape(self, name: str) -> tuple[int, ...]:
        return self.a.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def get_flat(store, name: str, start: int, stop: int) -> torch.Tensor:
    """Elements ``start:stop`` of a flattened tensor of any store (reading only those where the store can)."""
    if hasattr(store, "get_flat"):
        return store.get_flat(name, start, stop)
    return store.get(name).reshape(-1)[start:stop]


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate ``items`` with a reader thread staying ``depth`` items ahead.

    File reads and tensor arithmetic release the GIL, so reading the next chunk overlaps computing on this one.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for it in items:
                if stop.is_set():
                    return
                q.put((True, it))
            q.put((True, done))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        while True:
            ok, it = q.get()
            if not ok:
                raise it
            if it is done:
                return
            yield it
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.01)


class ShardWriter:
    """Write tensors one by one into size-bounded safetensors shards, all in a temporary directory.

    Call :meth:`finish` to write the index and move the directory into place atomically; on error
    (or :meth:`abort`) nothing is left at the destination.
    """

    def __init__(self, out_dir: str | Path, prefix: str, max_shard_bytes: int = 1 << 30):
        import tempfile

        self.out = Path(out_dir)
        if self.out.exists() and any(self.out.iterdir()):
            raise FileExistsError(f"{self.out} already exists and is not empty")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.prefix = prefix
        self.max_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[dict[str, torch.Tensor] | list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.detach().to("cpu").contiguous()
        self.pending_bytes += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        k = len(self.shards) + 1
        save_file(self.pending, self.tmp / f"{self.prefix}-{k:05d}.safetensors", {"_reserve": " " * HEADER_RESERVE})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self, metadata: dict[str, str]) -> Path:
        """Write the last shard, put ``metadata`` in every header, and move the directory into place."""
        try:
            if self.pending or not self.shards:
                self._flush()
            n = len(self.shards)
            weight_map = {}
            for k, names in enumerate(self.shards, start=1):
                src = self.tmp / f"{self.prefix}-{k:05d}.safetensors"
                dst_name = f"{self.prefix}.safetensors" if n == 1 else f"{self.prefix}-{k:05d}-of-{n:05d}.safetensors"
                _rewrite_metadata(src, self.tmp / dst_name, metadata)
                weight_map.update({name: dst_name for name in names})
            if n > 1:
                index = {"metadata": {"total_size": self.total, **metadata}, "weight_map": weight_map}
                atomic_write_text(self.tmp / f"{self.prefix}.safetensors.index.json", json.dumps(index, indent=1))
            for f in self.tmp.iterdir():
                f.chmod(0o644)
            self.tmp.chmod(0o755)
            if self.out.exists():
                self.out.rmdir()  # empty (checked at start)
            self.tmp.rename(self.out)
            return self.out
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


HEADER_RESERVE = 16384  # bytes of header room kept for metadata known only when a stream ends


def _rewrite_metadata(src: Path, dst: Path, metadata: dict[str, str]) -> None:
    """Move ``src`` to ``dst`` with ``metadata`` in its header.

    Shards are written with a blank reservation in their header, so the final metadata (which holds
    hashes known only at the end of a stream) is written in place; the safetensors format allows a
    header padded with spaces. Only when it does not fit is the file copied.
    """
    with open(src, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != "_reserve"}
        header["__metadata__"] = {**meta, **metadata}
        raw = json.dumps(header, separators=(",", ":")).encode()
        if len(raw) <= n:
            fh.seek(8)
            fh.write(raw + b" " * (n - len(raw)))
            fh.close()
            src.rename(dst)
            return
        raw += b" " * ((8 - len(raw) % 8) % 8)  # keep the data 8-byte aligned
        fh.seek(8 + n)
        with open(dst, "wb") as out:
            out.write(len(raw).to_bytes(8, "little"))
            out.write(raw)
            while block := fh.read(1 << 24):
                out.write(block)
    src.unlink()


def _tensor_seed(name: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


BLOCK = 1 << 20  # elements: tensors above this are drawn (and perturbed) in blocks of whole rows


def blocks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Element ranges ``[start, stop)`` of a flattened tensor of ``shape``: the whole tensor up to :data:`BLOCK`
    elements, else blocks of whole rows of at most :data:`BLOCK` elements (one row when a row is larger).

    Seeded Gaussian tensors are drawn block by block and the perturbation computes θ₀ + Σ cᵢ·dᵢ block by block,
    so neither needs more than one block of scratch memory; tensors of the model organism are single blocks."""
    n = _numel(shape)
    if n <= BLOCK:
        return [(0, n)]
    row = n // shape[0] if shape and shape[0] else n
    step = max(1, BLOCK // max(row, 1)) * row
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def gaussian_block(name: str, shape: tuple[int, ...], seed: int, k: int, out: torch.Tensor) -> torch.Tensor:
    """Fill ``out`` (1-D, float32, on any device) with block ``k`` of :func:`gaussian_tensor` drawn by ``out``'s own
    device's generator: on the CPU these are exactly the elements of the stored tensor; a CUDA generator draws
    other numbers from the same seeds (the run records where its random directions were drawn)."""
    parts = blocks(shape)
    key = name if len(parts) == 1 else f"{name}#{k}"
    g = torch.Generator(device=out.device).manual_seed(_tensor_seed(key, seed))
    return torch.randn(out.numel(), generator=g, dtype=torch.float32, device=out.device, out=out)


def gaussian_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """N(0, 1) tensor for parameter ``name``: drawn on the CPU from a generator seeded by (seed, name), block by
    block for tensors above :data:`BLOCK` elements (each block from (seed, name, block)), so a direction does not
    depend on the device or on the order tensors are visited in."""
    flat = torch.empty(_numel(shape), dtype=torch.float32)
    for k, (a, b) in enumerate(blocks(shape)):
        gaussian_block(name, shape, seed, k, flat[a:b])
    return flat.reshape(shape)


class RandomStore:
    """A seeded Gaussian direction that is drawn when a tensor is asked for: it costs no memory, and the
    perturbation can draw it again on the device instead of storing it (:class:`~landscape.perturb.Perturbation`).

    Args:
        shapes: tensor name -> shape.
        seed: the direction's seed.
        origin: where the shapes came from.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int, origin: str):
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.seed = int(seed)
        self.origin = origin

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str) -> torch.Tensor:
        return gaussian_tensor(name, self.shape(name), self.seed)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise KeyError(f"{self.origin}: no tensor {name!r}")
        return self.shapes[name]

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32

    def scale(self, name: str) -> torch.Tensor | None:
        """The factor each drawn tensor is multiplied by (None: 1)."""
        return None

    def zero(self, name: str) -> bool:
        """The tensor is zero (blacklisted by a normalisation)."""
        return False


class ScaledRandomStore(RandomStore):
    """A normalised seeded Gaussian direction: ``gaussian_tensor(name) * scale[name]`` (``scale`` a 0-d tensor or a
    per-row / per-column tensor that broadcasts against the shape), zero for the names in ``zeros``: the same
    arithmetic as :func:`~landscape.directions.normalize` applies to a stored one, so both are bit-identical."""

    def __init__(self, base: RandomStore, scales: dict[str, torch.Tensor | None], zeros: set[str]):
        super().__init__(base.shapes, base.seed, base.origin)
        self.scales, self.zeros = dict(scales), set(zeros)

    def get(self, name: str) -> torch.Tensor:
        if name in self.zeros:
            return torch.zeros(self.shape(name), dtype=torch.float32)
        g = super().get(name)
        s = self.scales.get(name)
        return g.clone() if s is None else g * s

    def scale(self, name: str) -> torch.Tensor | None:
        return self.scales.get(name)

    def zero(self, name: str) -> bool:
        return name in self.zeros
