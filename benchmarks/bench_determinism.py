"""Organism builds under different kernel dispatch settings: bit-identical when pinned, and what pinning costs.

    python benchmarks/bench_determinism.py             # tiny organism, full build (stages, judges, premise)

Builds the tiny organism from an empty cache in a fresh process per setting and hashes every checkpoint:
``unpinned`` (the machine's own dispatch), then pinned (:mod:`landscape.determinism`) with MKL told to use
AVX-512 (its default here), AVX2 or SSE4.2 (``MKL_ENABLE_INSTRUCTIONS``: what MKL would pick on other CPUs), and
pinned with ``ATEN_CPU_CAPABILITY=default`` as a control that the hashes do see the kernels. Prints the table and
writes ``benchmarks/results/determinism.json`` (``records``: setting, seconds, digest; ``identical``: every pinned
setting gave the same checkpoints; ``pinned_over_unpinned``: build time ratio).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CODE = (
    "from landscape.organism import build_organism; import sys; build_organism('tiny', 0, sys.argv[1], progress=False)"
)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.safetensors")):
        h.update(str(f.relative_to(root).parts[1:]).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(HERE / "results" / "determinism.json"))
    a = ap.parse_args(argv)
    from landscape.determinism import PIN_NAME, pinned_env
    from landscape.io import atomic_write_json
    from landscape.results import environment

    unpinned = {**os.environ, "SAFETY_LANDSCAPE_NO_PIN": "1"}
    settings = {
        "unpinned": unpinned,
        "pinned": pinned_env(),
        "pinned, MKL AVX2": {**pinned_env(), "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        "pinned, MKL SSE4.2": {**pinned_env(), "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
        "control: ATen default": {**pinned_env(), "ATEN_CPU_CAPABILITY": "default"},
    }
    records = []
    for name, env in settings.items():
        with tempfile.TemporaryDirectory(prefix="bench-det-") as tmp:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CODE, tmp], env=env, capture_output=True, text=True)
            secs = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"{name}: build failed\n{done.stderr[-2000:]}")
            records.append({"setting": name, "seconds": round(secs, 1), "digest": digest(Path(tmp))})
        print(f"{name:<24} {records[-1]['seconds']:7.1f} s  {records[-1]['digest']}")
    pinned = [r for r in records if r["setting"].startswith("pinned")]
    identical = len({r["digest"] for r in pinned}) == 1
    control_differs = records[-1]["digest"] != pinned[0]["digest"]
    ratio = round(pinned[0]["seconds"] / records[0]["seconds"], 3)
    print(f"pinned settings identical: {identical}; control differs: {control_differs}; pinned/unpinned {ratio}")
    atomic_write_json(
        a.json,
        {"records": records, "identical": identical, "control_differs": control_differs,
         "pinned_over_unpinned": ratio, "pin": PIN_NAME, "env": environment(),
         "command": "python benchmarks/bench_determinism.py"},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
