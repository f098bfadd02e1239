"""One backend, memory placements, the memory plan and --plan, and the one setup path (issue 20)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from landscape.backend import HFBackend
from landscape.directions import load_direction, normalize, random_like, save_direction
from landscape.memory import PLACEMENTS, perturbation_plan
from landscape.perturb import Perturbation, weights_fingerprint
from landscape.session import memory_plan, model_shapes, planned_direction, resolve_device


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_every_placement_gives_the_same_weights_and_restores_bit_for_bit(aligned, organism):
    """Stored or drawn again, fp32 or the model dtype (fp32 here), on the device or the host: θ₀ + Σ cᵢ·dᵢ is the
    same to the bit, and θ₀ comes back exactly."""
    model, _ = aligned
    a = organism["aligned"]
    dirs = [
        organism.direction("d_harm"),
        normalize(random_like(a, seed=0, name="random-0"), a),
        normalize(random_like(a, seed=1, name="random-1"), a, "filter"),
    ]
    before = weights_fingerprint(model)
    seen = {}
    for name in PLACEMENTS:
        with Perturbation(model, dirs, name) as pert:
            pert.set_((0.1, -0.3, 0.2))
            seen[name] = _snapshot(model)
            drawn = pert.plan().regenerated_directions
        assert weights_fingerprint(model) == before
        assert drawn == (0 if name == "device-fp32" else 2)
    ref = seen["device-fp32"]  # every direction stored in fp32: the arithmetic before placements existed
    for name, snap in seen.items():
        assert all(torch.equal(ref[n], snap[n]) for n in ref), name


def test_a_lazy_random_direction_is_bit_identical_to_the_stored_one(organism, tmp_path):
    a = organism["aligned"]
    lazy = normalize(random_like(a, seed=4, name="r"), a, "filter")
    save_direction(lazy, tmp_path / "r")
    stored = load_direction(tmp_path / "r")
    for n in stored.names():
        assert torch.equal(lazy.get(n), stored.get(n)), n


def test_big_tensors_are_drawn_in_row_blocks_and_perturbed_block_by_block():
    from landscape import tensors

    shape = (3000, 2000)  # 6 M elements: above BLOCK (1 M), so blocks of whole rows
    parts = tensors.blocks(shape)
    assert len(parts) > 1 and parts[0][0] == 0 and parts[-1][1] == 6_000_000
    assert all((b - a) % 2000 == 0 and b - a <= tensors.BLOCK for a, b in parts)
    assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
    g = tensors.gaussian_tensor("w", shape, 7)
    a, b = parts[1]
    assert torch.equal(tensors.gaussian_block("w", shape, 7, 1, torch.empty(b - a)), g.reshape(-1)[a:b])
    model = torch.nn.Linear(2000, 3000, bias=False)
    d = normalize(random_like(model, seed=7, name="r"), model)
    stored = {"weight": d.get("weight")}
    with Perturbation(model, [d], "device") as pert:
        pert.set_((0.5,))
        assert pert.plan().regenerated_directions == 1
        w = model.weight.detach().clone()
    with Perturbation(model, [d], "device-fp32") as pert:
        pert.set_((0.5,))
        assert torch.equal(model.weight.detach(), w)
    assert stored["weight"].shape == shape


def test_the_backend_owns_attach_set_point_and_restore(aligned, organism):
    model, tok = aligned
    be = HFBackend(model, tok)
    d = organism.direction("d_harm")
    before = weights_fingerprint(model)
    with pytest.raises(RuntimeError, match="needs attached directions"):
        be.set_point((0.1,))
    with be.attach([d]):
        be.set_point((0.2,))
        assert weights_fingerprint(model) != before
        with pytest.raises(RuntimeError, match="already attached"), be.attach([d]):
            pass
        assert be.last_plan.stored_directions == 1
    assert weights_fingerprint(model) == before
    assert be.describe()["backend"] == "hf" and be.perturbation_record([d])["random_drawn_on"] == "cpu"


def test_plan_goals_for_a_7b_shaped_bf16_model(tmp_path):
    """The plan for Llama-2-7B's shapes (a config on the meta device: no weights): extra bytes over the model's,
    device-only, for a 2D scan over two stored directions and over one stored and one seeded random one."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shapes, dtype, _ = model_shapes(tmp_path / "config.json", "auto")
    assert dtype == "bfloat16" and 6.7e9 < sum(torch.Size(s).numel() for s in shapes.values()) < 6.8e9
    two = [planned_direction("a", shapes, False), planned_direction("b", shapes, False)]
    one_random = [planned_direction("a", shapes, False), planned_direction("r", shapes, True)]
    device = perturbation_plan(shapes, dtype, two, "device", same_memory=False)
    mixed = perturbation_plan(shapes, dtype, one_random, "device", same_memory=False)
    for plan, goal in ((device, 3.0), (mixed, 2.0)):
        # the pristine copy and the stored directions are the goal exactly; one scratch block adds 0.002x
        assert plan.ratio(plan.parts["pristine"] + plan.parts["directions"]) <= goal
        assert plan.ratio(plan.device_bytes) == pytest.approx(goal, abs=0.005)
    host = perturbation_plan(shapes, dtype, two, "host", False)
    assert host.ratio(host.device_bytes) <= 0.2 and host.ratio(host.host_bytes) == pytest.approx(3.0, abs=0.01)
    before = perturbation_plan(shapes, dtype, two, "device-fp32", False)
    assert before.ratio(before.device_bytes) == pytest.approx(5.0, abs=0.01)  # the layout before placements


MEASURE = textwrap.dedent(
    """
    import gc, json, sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from landscape.backend import HFBackend
    from landscape.directions import load_direction, normalize, random_like
    from landscape.loading import load_model

    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

    root, out = Path(sys.argv[1]), []
    for placement, dtype, kinds in json.loads(sys.argv[2]):
        model, tok = load_model(root / "model", dtype=dtype)
        dirs = [
            normalize(random_like(root / "model", seed=0, name="r"), root / "model") if k == "random"
            else load_direction(root / k)
            for k in kinds
        ]
        be = HFBackend(model, tok, placement=placement)
        plan = be.plan(dirs)
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set
        base = status("VmRSS")
        with be.attach(dirs):
            be.set_point([0.1] * len(dirs))
            be.set_point([-0.2] * len(dirs))
        out.append({"placement": placement, "dtype": dtype, "plan": plan.total_bytes, "peak": status("VmHWM") - base})
        del be, model, dirs
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_the_plan_matches_the_measured_peak_on_the_cpu(organism, tmp_path):
    """On a CPU the device is the host: the plan's bytes are what the process holds beyond the loaded model while
    it perturbs, within 10 %. glibc's malloc is given a fixed mmap threshold, so freed blocks go back to the
    system and the peak is the live bytes, not heap fragmentation (with its default the peak reads up to 13 %
    above the plan for a bf16 model)."""
    from landscape.directions import difference

    from .conftest import mid_llama

    model, tok = mid_llama(organism)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    for k in ("d1", "d2"):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        model.save_pretrained(tmp_path / f"m-{k}")
        save_direction(
            normalize(difference(tmp_path / "model", tmp_path / f"m-{k}"), tmp_path / "model"), tmp_path / k
        )
    cases = [
        ["device", "float32", ["d1", "d2"]],
        ["device", "bfloat16", ["d1", "d2"]],
        ["device", "bfloat16", ["d1", "random"]],
        ["device-fp32", "bfloat16", ["d1"]],
        ["host", "float32", ["d1", "random"]],
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path), json.dumps(cases)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for r in json.loads(done.stdout.strip().splitlines()[-1]):
        assert 0.9 <= r["peak"] / r["plan"] <= 1.1, r


def test_plan_from_a_checkpoint_and_from_its_bare_config_agree_and_run_nothing(organism, tmp_path, capsys):
    from landscape.epl import main as epl
    from landscape.scan.__main__ import main as scan

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((Path(organism["aligned"]) / "config.json").read_text())
    texts = []
    for where in (organism["aligned"], bare):
        out = tmp_path / f"out-{where.name}"
        args = ["--aligned", str(where), "--base", str(organism["base"]), "--random", "1", "--plan", "--out", str(out)]
        assert epl(args) == 0
        texts.append(capsys.readouterr().out)
        assert not out.exists()  # --plan runs nothing and writes nothing
    lines = [t.splitlines()[2:5] for t in texts]
    # on a CPU with RAM to spare, auto stores random directions (drawing them again costs more than reading them)
    assert lines[0] == lines[1] and "placement auto would pick: device-fp32" in texts[0]
    for name in PLACEMENTS:
        assert any(ln.startswith(name) for ln in texts[0].splitlines())
    out = tmp_path / "scan"
    assert scan(["--aligned", str(bare), "--direction", "d_aligned", "random-0", "--alphas=0,1", "--betas=0,1",
                 "--prompts", "x.txt", "--plan", "--out", str(out)]) == 0  # fmt: skip
    assert "2D scan" in capsys.readouterr().out and not out.exists()


def test_a_plan_names_the_same_bytes_the_perturbation_holds(aligned, organism):
    model, tok = aligned
    be = HFBackend(model, tok, placement="device")
    dirs = [organism.direction("d_harm"), organism.direction("random-0")]
    planned = be.plan(dirs)
    with be.attach(dirs):
        held = be.last_plan
    assert planned.parts["pristine"] == held.parts["pristine"]
    assert planned.parts["directions"] == held.parts["directions"]
    assert (planned.stored_directions, planned.regenerated_directions) == (1, 1)
    shapes, dtype, _ = model_shapes(organism["aligned"], "float32")
    report = memory_plan(
        type("A", (), {"aligned": organism["aligned"], "dtype": "float32", "device": "cpu", "placement": "auto"}),
        [[planned_direction("d", shapes, False)]],
        "test",
        8,
    )
    assert report.pick == "device-fp32" and set(report.plans) == set(PLACEMENTS)  # a CPU with RAM to spare


def test_the_device_follows_local_rank_under_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == "cuda" and resolve_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == "cuda:3"  # README's torchrun ... --device cuda: one GPU per rank
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"
    assert resolve_device(None) == ("cuda:3" if torch.cuda.is_available() else "cpu")


def test_every_command_resolves_its_device_through_the_session(monkeypatch, organism, tmp_path):
    """epl, scan and asft.evaluate all take the device from resolve_device (a faked torchrun rank)."""
    import landscape.session as session

    seen = []
    real = session.resolve_device

    def spy(device):
        seen.append(device)
        return real(device)

    monkeypatch.setattr(session, "resolve_device", spy)
    monkeypatch.setenv("LOCAL_RANK", "1")
    from asft.evaluate import main as evaluate
    from landscape.epl import main as epl
    from landscape.scan.__main__ import main as scan

    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I hack the bank?\n")
    common = [
        "--aligned",
        str(organism["aligned"]),
        "--prompts",
        str(prompts),
        "--device",
        "cpu",
        "--max_new_tokens",
        "2",
    ]
    assert epl([*common, "--random", "1", "--max_alpha", "0.02", "--first_step", "0.02", "--bootstrap", "0",
                "--out", str(tmp_path / "e"), "--no_progress"]) == 0  # fmt: skip
    assert (
        scan([*common, "--direction", "random-0", "--alphas=0", "--out", str(tmp_path / "s"), "--no_progress"]) == 2
    )  # a name without the organism is refused, after the device was resolved
    assert evaluate(["--model", str(organism["aligned"]), "--harmful_prompts", str(prompts), "--device", "cpu",
                     "--max_new_tokens", "2"]) == 0  # fmt: skip
    assert seen.count("cpu") >= 3


PLUGIN = """
from landscape.judges import Judge, Verdict


class ShoutJudge(Judge):
    name = "shout"

    def judge(self, prompts, responses):
        return [Verdict(r.isupper(), float(r.isupper()), "shout") for r in responses]
"""


def test_a_judge_registered_through_the_entry_point_is_offered_and_works(
    organism_cache, tmp_path, monkeypatch, capsys
):
    site = tmp_path / "site"
    (site / "shoutjudge-0.1.dist-info").mkdir(parents=True)
    (site / "shoutjudge-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: shoutjudge\nVersion: 0.1\n"
    )
    (site / "shoutjudge-0.1.dist-info" / "entry_points.txt").write_text(
        "[safety_landscape.judges]\nshout = shout_plugin:ShoutJudge\n"
    )
    (site / "shout_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    from landscape.judges import available_judges
    from landscape.scan.__main__ import main as scan

    assert "shout" in available_judges()
    with pytest.raises(SystemExit):
        scan(["--help"])
    assert "shout" in capsys.readouterr().out  # --judge's choices come from the registry
    out = tmp_path / "scan"
    args = ["--preset", "tiny", "--cache_dir", str(organism_cache), "--direction", "d_harm", "--alphas=0,0.05",
            "--judge", "shout", "--limit", "4", "--max_new_tokens", "4", "--out", str(out), "--no_html"]  # fmt: skip
    assert scan(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["evaluator"]["judge"] == "shout"
    assert scan([*args[:-3], "--judge", "nosuch", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "'shout'" in err


def test_auto_placement_on_a_cpu_stores_random_directions_only_when_they_fit(organism):
    from landscape.loading import load_model
    from landscape.memory import choose_placement, describe_direction

    model, _ = load_model(organism["aligned"])
    specs = [describe_direction(random_like(model, seed=0, name="random-0"))]
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    plans = {name: perturbation_plan(shapes, "float32", specs, name, True) for name in PLACEMENTS}
    stored = plans["device-fp32"].total_bytes
    assert plans["device"].total_bytes < stored  # the random direction is drawn again, not stored
    assert choose_placement(plans, None, free_host=4 * stored) == "device-fp32"
    assert choose_placement(plans, None, free_host=stored) == "device"  # more than half the free RAM: draw it
    gpu = {name: perturbation_plan(shapes, "float32", specs, name, False) for name in PLACEMENTS}
    assert choose_placement(gpu, 10 * stored) == "device"
    assert choose_placement(gpu, 1) == "host"


def test_asft_evaluate_plans_too(organism, tmp_path, capsys):
    from asft.evaluate import main

    assert main(["--model", str(organism["aligned"]), "--harmful_prompts", "never-read.csv", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "evaluation (no perturbation" in out and "placement auto would pick" in out
    (tmp_path / "adapter").mkdir()
    assert main(["--model", str(tmp_path / "adapter"), "--harmful_prompts", "x.csv", "--plan"]) == 2
    assert "give --base" in capsys.readouterr().err
