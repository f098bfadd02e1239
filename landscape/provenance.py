"""Which checkpoints a direction belongs to, checked where it is applied.

Every direction built from checkpoints records their content hashes (sha256 over name, dtype, shape and bytes
of every tensor, computed while the tensors are streamed anyway) and model type. Before a command moves a
model along a direction it checks that the model is one of the direction's sources: a direction of another
model whose names and shapes happen to match (Llama and Mistral, a Llama anchor on Qwen2, an adapter on the
wrong base) would otherwise give a number about nothing. ``--allow_foreign_direction`` overrides the check,
and the results record that it did.
"""

from __future__ import annotations

import json
from pathlib import Path

_HASHES: dict[tuple[str, tuple], str] = {}


class ForeignDirectionError(ValueError):
    """A direction applied to a model it was not computed from."""


def _stamp(p: Path) -> tuple:
    files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin")) if p.is_dir() else [p]
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def remember(path: str | Path, sha256: str) -> None:
    """Note a checkpoint's content hash computed elsewhere (``difference`` hashes both sides as it streams)."""
    p = Path(path)
    if p.exists():
        _HASHES[(str(p.resolve()), _stamp(p))] = sha256


def checkpoint_hash(path: str | Path) -> str:
    """Content hash of a checkpoint directory (cached per process while its files are unchanged)."""
    from .directions.core import content_hash
    from .gguf import resolve_checkpoint
    from .tensors import open_store

    p = resolve_checkpoint(path)
    key = (str(p.resolve()), _stamp(p))
    if key not in _HASHES:
        _HASHES[key] = content_hash(open_store(p))
    return _HASHES[key]


def model_type(path: str | Path) -> str | None:
    """``model_type`` from a checkpoint directory's config.json (None when there is none)."""
    from .gguf import gguf_file, resolve_checkpoint

    p = Path(path)
    cfg = (resolve_checkpoint(p) if p.exists() and gguf_file(p) is not None else p) / "config.json"
    try:
        return json.loads(cfg.read_text()).get("model_type") if cfg.is_file() else None
    except (json.JSONDecodeError, OSError):
        return None


def check_source(direction, model_dir: str | Path, allow_foreign: bool = False) -> str | None:
    """Raise :class:`ForeignDirectionError` unless ``model_dir`` is one of the checkpoints ``direction`` came from.

    Directions without recorded hashes (seeded random ones: they only borrow shapes) pass. Returns None when
    the direction belongs to the model, else (with ``allow_foreign``) the reason it does not, for the record.
    """
    sources = [s for s in direction.meta.get("sources", []) if s.get("sha256")]
    if not sources:
        return None
    mine = checkpoint_hash(model_dir)
    if mine in {s["sha256"] for s in sources}:
        return None
    where = ", ".join(f"{s.get('role')} {s.get('path')}" for s in sources)
    reason = (
        f"direction {direction.name!r} was computed from other checkpoints ({where}) than {model_dir} "
        f"(content hashes differ; model types {sorted({str(s.get('model_type')) for s in sources})} vs "
        f"{model_type(model_dir)!r})"
    )
    if not allow_foreign:
        raise ForeignDirectionError(reason + "; pass --allow_foreign_direction to apply it anyway (recorded)")
    return reason
