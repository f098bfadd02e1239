"""Pinned kernels: organisms and the figures' checked results bit-identical under every dispatch setting of one CPU.

Float results on a CPU depend on which kernels run: torch's own (ATen) dispatch to AVX2 or AVX-512 code, MKL picks
code paths by vendor and instruction set, oneDNN by instruction set, and reductions split by thread count. The
same seed then trains a different organism on another kind of CPU. A *pinned* process fixes all four:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's AVX2 kernels, which every x86-64 CPU since 2013 (Intel Haswell, AMD
  Excavator / Zen) runs, AVX-512 machines included;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the code path that gives the same results
  on every Intel or compatible CPU (not the vendor- and ISA-specific fast paths);
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's kernels capped the same way;
- 2 OpenMP / MKL threads: the reductions' split.

The variables act when the libraries start, so a pinned run is a process of its own: :func:`run_pinned` starts one.
``python -m landscape.figures`` runs pinned, and so do the organism builds it makes; other organism builds are
pinned on request (``SAFETY_LANDSCAPE_PIN=1``: :func:`builds_pinned`); an EPL search or a scan of a user's model
is not (they record the kind of CPU instead, and run at full speed).
Measured on an AMD EPYC (AVX-512) with 2 cores: tiny organism checkpoints bit-identical whatever MKL was told
to use (``MKL_ENABLE_INSTRUCTIONS`` AVX-512, AVX2, SSE4.2) under the pins (``benchmarks/RESULTS.md``).
On a CPU without AVX2, or not x86-64, pinning does not apply: results are then those of that machine.
What the pins do not give: the same checkpoints on an AMD and an Intel CPU. The same code, pins and seed built the
tiny organism with digest beea87883af175a4 on an AMD EPYC and 30a946072bd9ec63 on an Intel Xeon (both 2 cores,
torch 2.13.0+cpu); the kernel that differs was not found, so ``figures --check`` keeps its exact references per
CPU vendor and holds other machines' results against the committed seeds' spread (:func:`landscape.figures.check`).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}
PIN_NAME = "x86_64-avx2-mkl_compatible-2threads"  # what a pinned result is comparable across
MARK = "SAFETY_LANDSCAPE_PINNED"
OFF = "SAFETY_LANDSCAPE_NO_PIN"  # set to 1 to run organism builds and figures unpinned (in this process)


def applicable() -> bool:
    """Pinning works here: an x86-64 CPU with AVX2 (and FMA), and not switched off by ``$SAFETY_LANDSCAPE_NO_PIN``."""
    if os.environ.get(OFF) == "1" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def is_pinned() -> bool:
    """This process was started with the pins (and nothing overrode them)."""
    return os.environ.get(MARK) == "1" and all(os.environ.get(k) == v for k, v in PINS.items())


def pin_name() -> str | None:
    """:data:`PIN_NAME` in a pinned process, else None (results then belong to this kind of CPU)."""
    return PIN_NAME if is_pinned() else None


def pinned_env(base: dict | None = None) -> dict:
    from ._pkg import OMP_MARK

    env = dict(os.environ if base is None else base)
    if env.pop(OMP_MARK, None):  # the searches' sleeping threads, not the caller's choice: builds run without
        env.pop("OMP_WAIT_POLICY", None)
    env.update(PINS)
    env[MARK] = "1"
    return env


ON = "SAFETY_LANDSCAPE_PIN"  # set to 1: organism builds from an unpinned process run in a pinned child


def needs_pinning() -> bool:
    """Whether work that must reproduce across CPUs should move to a pinned process."""
    return applicable() and not is_pinned()


def builds_pinned() -> bool:
    """Whether organism builds here are pinned: in a pinned process, or asked for with ``$SAFETY_LANDSCAPE_PIN=1``
    (then in a pinned child). Off otherwise: the pinned draw of the tiny organism misses its own quality bars (its
    aligned stage's task accuracy 84.5 % against the tests' 90 %), so the test suite's organisms stay unpinned."""
    return is_pinned() or (applicable() and os.environ.get(ON) == "1")


def run_pinned(args: list[str]) -> int:
    """``python ARGS`` in a pinned process (output passes through); its exit status."""
    return subprocess.run([sys.executable, *args], env=pinned_env(), check=False).returncode


def module_main(module: str, main, argv: list[str] | None = None) -> int:
    """A command's entry point: ``main(argv)`` here when pinned (or pinning does not apply), else the same command
    in a pinned process."""
    if needs_pinning():
        return run_pinned(["-m", module, *(sys.argv[1:] if argv is None else argv)])
    return main(argv)
