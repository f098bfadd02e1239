"""Pinned kernels: the same bits whatever instruction set MKL is told to use (issue 26)."""

import os
import subprocess
import sys

import pytest

from landscape.determinism import PINS, applicable, is_pinned, module_main, pinned_env

needs_x86 = pytest.mark.skipif(not applicable(), reason="pinning applies on x86-64 CPUs with AVX2 only")

PROBE = """
import hashlib, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
a, b = torch.randn(256, 512), torch.randn(512, 384)
x = torch.randn(16, 1024)
m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4))
ids = torch.randint(0, 64, (4, 12))
loss = m(input_ids=ids, labels=ids).loss
loss.backward()
g = m.model.layers[0].mlp.up_proj.weight.grad
parts = [a @ b, torch.softmax(x, -1), torch.nn.functional.layer_norm(x, (1024,)), g]
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in parts)).hexdigest()
print(torch.backends.cpu.get_cpu_capability(), digest)
"""


def probe(env: dict) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    cap, digest = done.stdout.split()[-2:]
    return cap, digest


@needs_x86
def test_pinned_kernels_give_the_same_bits_whatever_mkl_is_told_to_use():
    """Matmul, softmax, layer norm and a Llama's forward and backward: bit-identical under the pins with MKL told to
    use AVX-512, AVX2 or SSE4.2 (what it would pick on other CPUs), and ATen on its AVX2 kernels."""
    seen = {}
    for isa in (None, "AVX2", "SSE4_2"):
        env = pinned_env()
        env.pop("MKL_ENABLE_INSTRUCTIONS", None)
        if isa:
            env["MKL_ENABLE_INSTRUCTIONS"] = isa
        seen[isa] = probe(env)
    assert {cap for cap, _ in seen.values()} == {"AVX2"}
    assert len({d for _, d in seen.values()}) == 1, seen
    # the probe does see kernels: ATen's scalar kernels give other bits
    assert probe({**pinned_env(), "ATEN_CPU_CAPABILITY": "default"})[1] != seen[None][1]


def test_pinned_and_unpinned_organisms_live_apart(monkeypatch, tmp_path):
    """A pinned build (inside a pinned process, or asked for with SAFETY_LANDSCAPE_PIN=1) goes to its own cache
    directory, so an unpinned organism is never taken for a pinned one; unasked, builds stay unpinned."""
    from landscape.organism.build import organism_dir

    for k in ("SAFETY_LANDSCAPE_PIN", "SAFETY_LANDSCAPE_PINNED", "SAFETY_LANDSCAPE_NO_PIN"):
        monkeypatch.delenv(k, raising=False)
    plain = organism_dir("tiny", 0, tmp_path)
    assert plain.parent.name == "organism-v3"
    monkeypatch.setenv("SAFETY_LANDSCAPE_PIN", "1")
    asked = organism_dir("tiny", 0, tmp_path)
    assert asked.parent.name == ("organism-v3-pinned" if applicable() else "organism-v3")
    monkeypatch.delenv("SAFETY_LANDSCAPE_PIN")
    for k, v in pinned_env({}).items():
        monkeypatch.setenv(k, v)
    assert organism_dir("tiny", 0, tmp_path).parent.name == "organism-v3-pinned"


def test_a_pinned_process_runs_the_command_itself(monkeypatch):
    monkeypatch.setenv("SAFETY_LANDSCAPE_PINNED", "1")
    for k, v in PINS.items():
        monkeypatch.setenv(k, v)
    assert is_pinned()
    assert module_main("nowhere", lambda argv: 7, []) == 7  # no child process: the module does not even exist
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # a pin overridden is no pin
    assert not is_pinned()
    monkeypatch.setenv("SAFETY_LANDSCAPE_NO_PIN", "1")
    assert not applicable() and module_main("nowhere", lambda argv: 8, []) == 8


def test_pins_are_what_the_docs_say():
    assert PINS["ATEN_CPU_CAPABILITY"] == "avx2" and PINS["MKL_CBWR"] == "COMPATIBLE"
    assert os.environ.get("SAFETY_LANDSCAPE_PINNED") != "1" or is_pinned()


def test_the_searches_let_idle_threads_sleep_unless_the_caller_chose():
    """``landscape.epl`` sets OMP_WAIT_POLICY=PASSIVE before torch loads (a user's own policy stays); a pinned
    organism build does not inherit the searches' policy, but does inherit a user's."""
    code = (
        "import os; import landscape.epl; from landscape.determinism import pinned_env; "
        "print(os.environ['OMP_WAIT_POLICY'], pinned_env().get('OMP_WAIT_POLICY', 'unset'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "SAFETY_LANDSCAPE_SET_OMP_WAIT_POLICY")}
    mine = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert mine.stdout.split() == ["PASSIVE", "unset"]
    theirs = subprocess.run(
        [sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert theirs.stdout.split() == ["ACTIVE", "ACTIVE"]
