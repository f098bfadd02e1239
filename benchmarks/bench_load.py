"""An EPL search on shared cores: alone, and beside a competing load of the same size, per OpenMP waiting policy.

    python benchmarks/bench_load.py                    # tiny organism, 2 threads per run, 2 repeats

Each run is ``python -m landscape.epl --preset tiny`` (d_aligned, d_harm, no random direction) in a fresh
results directory. ``alone``: one run on the machine. ``shared``: two identical runs started together (a competing
load of equal size), each timed. Policies of torch's OpenMP (libgomp): ``default`` (nothing set: idle threads
spin for GOMP_SPINCOUNT = 300 000 rounds, then sleep), ``active`` (OMP_WAIT_POLICY=ACTIVE: they spin),
``spin10k`` (GOMP_SPINCOUNT=10000: they spin briefly) and ``passive`` (OMP_WAIT_POLICY=PASSIVE: they sleep at
once). The goal (issue 26): a run beside a competing load of equal size takes at most about its fair share,
<= 2.5x its idle time.

Prints the table and writes ``benchmarks/results/load.json`` (``records``: policy, mode, seconds; ``ratios``:
shared over alone per policy), with the machine's CPU kind and thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


POLICIES = {
    "default": {},  # libgomp's own: spin a while (GOMP_SPINCOUNT 300 000), then sleep
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},  # spin
    "spin10k": {"GOMP_SPINCOUNT": "10000"},  # spin briefly, then sleep
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # sleep at once
}


def one(cache: str, out: Path, policy: str, threads: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy], OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "landscape.epl", "--preset", "tiny", "--cache_dir", cache, "--random", "0",
           "--out", str(out), "--no_progress", "--bootstrap", "0"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed(procs: list[subprocess.Popen]) -> list[float]:
    """Each process's own wall time (they started together)."""
    t0 = time.perf_counter()
    ends: list[float | None] = [None] * len(procs)
    while any(e is None for e in ends):
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = time.perf_counter() - t0
                if p.returncode != 0:
                    raise SystemExit(f"an EPL run failed: {p.stderr.read()[-2000:]}")
        time.sleep(0.05)
    return ends


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache_dir", default=None, help="organism cache (default: a temporary one, built first)")
    ap.add_argument("--json", default=str(HERE / "results" / "load.json"))
    a = ap.parse_args(argv)
    from landscape.io import atomic_write_json
    from landscape.organism import build_organism
    from landscape.results import environment

    cache = a.cache_dir or tempfile.mkdtemp(prefix="bench-load-")
    build_organism("tiny", seed=0, cache_dir=cache, progress=False)
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-load-runs-") as tmp:
        k = 0
        for rep in range(a.repeats):
            for policy in POLICIES:
                for mode in ("alone", "shared"):
                    n = 1 if mode == "alone" else 2
                    outs = [Path(tmp) / f"run{k + i}" for i in range(n)]
                    k += n
                    secs = timed([one(cache, o, policy, a.threads) for o in outs])
                    for s in secs:
                        records.append({"policy": policy, "mode": mode, "repeat": rep, "seconds": round(s, 2)})
    ratios = {}
    print(f"{'policy':<8} {'alone s':>8} {'shared s':>9} {'shared/alone':>13}")
    for policy in POLICIES:
        alone = statistics.median(r["seconds"] for r in records if r["policy"] == policy and r["mode"] == "alone")
        shared = statistics.median(r["seconds"] for r in records if r["policy"] == policy and r["mode"] == "shared")
        ratios[policy] = round(shared / alone, 3)
        print(f"{policy:<8} {alone:8.1f} {shared:9.1f} {ratios[policy]:13.2f}")
    env = environment()
    atomic_write_json(
        a.json,
        {"records": records, "ratios": ratios, "threads": a.threads, "cpu_kind": env.get("cpu_kind"),
         "env": env, "command": "python benchmarks/bench_load.py " + " ".join(argv or sys.argv[1:])},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
