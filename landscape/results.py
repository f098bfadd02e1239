"""The results of a scan on disk: ``run.json`` (the run's metadata) and append-only ``points*.jsonl``.

Every finished point is one JSON line written with a single ``write`` and fsync'd; a torn last line from
a killed process is dropped on the next open. One process writes ``points.jsonl``; under torchrun each rank
appends to its own ``points.rankNNN.jsonl`` and readers merge them. A run whose metadata differs from the
stored ``run.json`` is refused, so results of different runs never mix.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from .io import atomic_write_json, dumps, loads, read_json

POINTS_FILE = "points.jsonl"
RUN_FILE = "run.json"
POINTS_GLOB = "points*.jsonl"


def cpu_kind() -> str:
    """The CPU's vendor and the instruction set torch's kernels dispatch to (e.g. ``AuthenticAMD AVX2``).

    Both change float results: torch picks AVX2 or AVX-512 kernels, and its BLAS picks code paths by vendor and
    instruction set, so the same seed trains a different model on another kind of CPU (the organism's Table 7
    moved by up to 0.25 in α between two x86-64 machines with 2 threads each)."""
    import platform

    import torch

    vendor = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            vendor = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("vendor_id")), vendor)
    except OSError:
        pass
    return f"{vendor} {torch.backends.cpu.get_cpu_capability()}"


def environment(device: str | None = None, dtype: str | None = None) -> dict:
    """What the numbers depend on besides the inputs: library versions, device, dtype, the kind of CPU and its
    thread count (float reduction order: results are reproducible on the same kind of machine with the same
    thread count, not across them)."""
    import platform

    import torch
    import transformers

    from .determinism import pin_name

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": cpu_kind(),
        "pinned": pin_name(),
    }


def point_key(series: str, coords: Sequence[float]) -> str:
    return series + "|" + ",".join(f"{float(c):.12g}" for c in coords)


class RunMismatchError(ValueError):
    pass


class RunInProgressError(ValueError):
    """Another run holds the output directory's lock."""


LOCK_FILE = ".lock"


class ResultsStore:
    """``run.json`` + append-only ``points.jsonl`` in one output directory.

    Args:
        out_dir: the directory (created if missing).
        meta: the run's metadata; compared with the stored one on resume.
        restart: discard stored points whose run differs (or all stored points) and start over.
    """

    def __init__(self, out_dir: str | Path, meta: dict, restart: bool = False, rank: int = 0, world_size: int = 1):
        from filelock import FileLock, Timeout

        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = None
        if rank == 0:  # one run per directory; the ranks of one run share rank 0's lock
            self.lock = FileLock(self.dir / LOCK_FILE, timeout=0)
            try:
                self.lock.acquire()
            except Timeout:
                raise RunInProgressError(
                    f"another run is writing to {self.dir} (it holds {self.dir / LOCK_FILE}); wait for it to "
                    "finish or use another output directory"
                ) from None
        try:
            self._open(meta, restart, rank, world_size)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the directory's lock (a killed process releases it too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self, meta: dict, restart: bool, rank: int, world_size: int) -> None:
        self.meta = loads(dumps(meta))
        run_file = self.dir / RUN_FILE
        # One process writes points.jsonl; under torchrun each rank appends to its own file, and every
        # reader merges all of them, so ranks never write to the same file.
        own = self.dir / (POINTS_FILE if world_size == 1 else f"points.rank{rank:03d}.jsonl")
        if restart:
            if world_size > 1:
                raise ValueError(
                    f"restart with several ranks would race; start over with one process or delete {self.dir}"
                )
            for f in self._files():
                f.unlink()
            run_file.unlink(missing_ok=True)
        if run_file.is_file():
            stored = read_json(run_file)
            diff = sorted(k for k in set(stored) | set(self.meta) if stored.get(k) != self.meta.get(k))
            if diff:
                raise RunMismatchError(
                    f"results in {self.dir} come from a different run (differs in: {', '.join(diff)}); "
                    "use another output directory, or start over (restart=True / --restart)"
                )
        elif any(f.stat().st_size for f in self._files()):
            raise RunMismatchError(f"{self.dir} has points but no {RUN_FILE}; start over (restart=True / --restart)")
        else:
            atomic_write_json(run_file, self.meta)  # every rank writes the same bytes: no race to lose
        self.points: dict[str, dict] = {}
        self.path = own
        self.reload()

    def _files(self) -> list[Path]:
        return sorted(self.dir.glob(POINTS_GLOB))

    def reload(self) -> None:
        """Read every points file again (other ranks may have added points)."""
        for f in self._files():
            self._load(f, truncate=f == self.path)

    def _load(self, path: Path, truncate: bool = True) -> None:
        if not path.is_file():
            return
        raw = path.read_bytes()
        good_end = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn final line: the process died while writing it
            try:
                rec = loads(line)
            except json.JSONDecodeError:
                break
            self.points[point_key(rec["series"], rec["coords"])] = rec
            good_end += len(line)
        if good_end < len(raw) and truncate:
            with open(path, "r+b") as fh:  # drop the torn tail so the next append starts on a fresh line
                fh.truncate(good_end)

    def get(self, series: str, coords: Sequence[float]) -> dict | None:
        return self.points.get(point_key(series, coords))

    def append(self, series: str, coords: Sequence[float], metrics: dict, seconds: float) -> dict:
        rec = {
            "series": series,
            "coords": [float(c) for c in coords],
            "metrics": metrics,
            "seconds": round(seconds, 4),
            "time": time.time(),
        }
        line = (dumps(rec) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.points[point_key(series, coords)] = rec
        return rec

    def series(self, name: str) -> list[dict]:
        return [r for r in self.points.values() if r["series"] == name]


@contextmanager
def removed_on_failure(out_dir: str | Path | None):
    """Run a block that writes into ``out_dir``; if it fails and the directory is new and holds no point,
    remove it, so that a run refused late (a direction from another model, a bad judge) leaves nothing."""
    new = out_dir is not None and not Path(out_dir).exists()
    try:
        yield
    except BaseException:
        d = Path(out_dir) if new else None
        if d is not None and d.is_dir() and not any(f.stat().st_size for f in d.glob(POINTS_GLOB)):
            shutil.rmtree(d, ignore_errors=True)
        raise
