"""Atomic file writes and content hashes: results are never left half-written."""

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


def atomic_write_json(path: str | Path, obj: Any, default=str) -> Path:
    """``obj`` as indented JSON, atomically; ``default`` converts what JSON cannot hold (numpy floats: ``float``)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=default) + "\n")


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
