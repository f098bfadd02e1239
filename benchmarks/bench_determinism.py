"""Organism builds under different kernel dispatch settings: bit-identical when pinned, and what pinning costs.

    python benchmarks/bench_determinism.py             # tiny organism, full build (stages, judges, premise)
    python benchmarks/bench_determinism.py --probe     # seconds: 3 AdamW steps of a small random Llama instead

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


# --probe: the build's kinds of kernels (attention, RMSNorm, MLP, cross-entropy, AdamW) in seconds; its digest is
# printed on stdout. It also tries thread settings, which a full build would take minutes each to try.
PROBE = """
import hashlib, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
m = LlamaForCausalLM(cfg)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x = torch.randint(0, 512, (16, 48))
for _ in range(3):
    loss = m(input_ids=x, labels=x).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
h = hashlib.sha256()
for p in m.parameters():
    h.update(p.detach().numpy().tobytes())
print(h.hexdigest()[:16])
"""


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.safetensors")):
        h.update(str(f.relative_to(root).parts[1:]).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="default: benchmarks/results/determinism[_probe].json")
    ap.add_argument("--probe", action="store_true", help="a 3-step training probe instead of the organism build")
    a = ap.parse_args(argv)
    a.json = a.json or str(HERE / "results" / ("determinism_probe.json" if a.probe else "determinism.json"))
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
    if a.probe:  # thread settings too (the control stays last)
        control = settings.pop("control: ATen default")
        settings["pinned, MKL 1 thread"] = {**pinned_env(), "MKL_NUM_THREADS": "1"}
        settings["pinned, 1 thread"] = {**pinned_env(), "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        settings["pinned, MKL_DYNAMIC=FALSE"] = {**pinned_env(), "MKL_DYNAMIC": "FALSE"}
        settings["control: ATen default"] = control
    records = []
    for name, env in settings.items():
        with tempfile.TemporaryDirectory(prefix="bench-det-") as tmp:
            t0 = time.perf_counter()
            code = [PROBE] if a.probe else [CODE, tmp]
            done = subprocess.run([sys.executable, "-c", *code], env=env, capture_output=True, text=True)
            secs = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"{name}: build failed\n{done.stderr[-2000:]}")
            dig = done.stdout.split()[-1] if a.probe else digest(Path(tmp))
            records.append({"setting": name, "seconds": round(secs, 1), "digest": dig})
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
         "command": "python benchmarks/bench_determinism.py" + (" --probe" if a.probe else "")},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
