"""Atomic file writes, standard JSON and content hashes: results are never left half-written.

Every JSON file the toolkit writes is standard JSON (RFC 8259), which has no NaN or infinity: :func:`dumps` writes
a non-finite float as the string ``"Infinity"``, ``"-Infinity"`` or ``"NaN"`` (the convention of protobuf's JSON
mapping), so JavaScript's ``JSON.parse``, jq and Python's ``json`` with ``parse_constant`` refusing read it as it
is; a censored EPL's interval is ``[lo, "Infinity"]``. :func:`loads` and :func:`read_json` turn those strings back
into floats everywhere except under the keys of :data:`TEXT_KEYS` (answers and prompts, where "NaN" is text).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "SAFETY_LANDSCAPE_CACHE"


def default_cache_dir() -> Path:
    """``$SAFETY_LANDSCAPE_CACHE``, else ``$XDG_CACHE_HOME/safety-landscape``, else ``~/.cache/safety-landscape``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "safety-landscape"


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


NONFINITE = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}
TEXT_KEYS = frozenset({"answer", "answers", "prompt", "prompts", "text", "response", "responses", "instruction"})


def _finite(obj: Any, default) -> Any:
    """``obj`` with every non-finite float (numpy's too) replaced by its string in :data:`NONFINITE`."""
    if isinstance(obj, float) or (hasattr(obj, "dtype") and getattr(obj, "ndim", None) == 0):
        try:
            v = float(obj)
        except (TypeError, ValueError):
            return default(obj)
        if v != v:
            return "NaN"
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return obj.item() if hasattr(obj, "item") and not isinstance(obj, float) else v
    if isinstance(obj, dict):
        return {k: _finite(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, default) for v in obj]
    return obj


def dumps(obj: Any, default=str, **kwargs) -> str:
    """Standard JSON: non-finite floats as ``"Infinity"``/``"-Infinity"``/``"NaN"`` (never bare tokens)."""
    return json.dumps(_finite(obj, default), allow_nan=False, default=default, **kwargs)


def _restore(obj: Any) -> Any:
    if isinstance(obj, str):
        return NONFINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: (v if k in TEXT_KEYS else _restore(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    return obj


def _no_constant(name: str):
    raise ValueError(f"not standard JSON: bare {name}")


def loads(text: str, strict: bool = False) -> Any:
    """Parse JSON written by :func:`dumps`, restoring non-finite floats. Bare ``NaN``/``Infinity`` tokens (written
    by older versions, or by another tool) are read as Python reads them, unless ``strict``."""
    raw = json.loads(text, parse_constant=_no_constant) if strict else json.loads(text)
    return _restore(raw)


def read_json(path: str | Path, strict: bool = False) -> Any:
    """:func:`loads` of a file."""
    return loads(Path(path).read_text(encoding="utf-8"), strict=strict)


def atomic_write_json(path: str | Path, obj: Any, default=str) -> Path:
    """``obj`` as indented standard JSON (:func:`dumps`), atomically; ``default`` converts what JSON cannot hold."""
    return atomic_write_text(path, dumps(obj, default=default, indent=2, sort_keys=False) + "\n")


def sha256_text(items: list[str]) -> str:
    """Hash of a list of strings (length-prefixed, so ["ab"] and ["a", "b"] differ)."""
    h = hashlib.sha256()
    for s in items:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def atomic_savefig(fig, path: str | Path) -> Path:
    """Save a matplotlib figure through a temporary file and a rename (no pyplot state is touched)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{p.suffix}")
    try:
        fig.savefig(tmp)
        tmp.replace(p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
