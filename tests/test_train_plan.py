"""``python -m asft.train --plan``: the bytes fine-tuning holds, planned from shapes and measured (issue 20)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from asft.config import AsftConfig
from asft.plan import training_plan
from asft.train import main as train_main

from .conftest import mid_llama

MEASURE = textwrap.dedent(
    """
    import gc, json, sys, torch
    from pathlib import Path
    torch.set_num_threads(1)
    from transformers import TrainerCallback
    from asft.config import AsftConfig
    from asft.data import SFTDataset, collate
    from asft.finetune import build_anchor, training_records
    from asft.plan import training_plan
    from asft.trainer import AsftTrainer
    from landscape.loading import load_model

    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

    class Peak(TrainerCallback):
        def on_train_end(self, args, state, control, **kw):
            self.peak = status("VmHWM")

    root, small, data, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    out = None
    for here in (small, root):  # the first run on the small model imports and initialises what training needs
        cfg = AsftConfig(aligned=str(here / "aligned"), base=str(here / "base"), data=data, mode=mode,
                         output_dir=str(root / "out"), max_steps=2, per_device_train_batch_size=2,
                         allow_unverified_anchor=True, report_to=[], disable_tqdm=True, use_cpu=True)
        plan = training_plan(cfg)
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set
        base = status("VmRSS")
        model, tok = load_model(cfg.aligned, dtype="float32")  # what fine_tune does, with a peak probe
        records = training_records(cfg)
        cfg.resolve_target_modules(model)
        anchor = build_anchor(cfg, model, tok, records)
        peak = Peak()
        tr = AsftTrainer(model=model, args=cfg, anchor=anchor, train_dataset=SFTDataset(tok, records),
                         data_collator=collate(tok.pad_token_id), callbacks=[peak])
        tr.train()
        out = {"plan": plan.total_bytes, "peak": peak.peak - base - plan.model_bytes}
        del tr, model, anchor
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def mid_model(organism, tmp_path_factory):
    """A 10.8 M-parameter Llama (random weights, the organism's tokenizer) and a base 0.01 away: big enough that
    training's state, not the interpreter, dominates the peak."""
    root = tmp_path_factory.mktemp("mid")
    model, tok = mid_llama(organism)
    for role in ("base", "aligned"):
        model.save_pretrained(root / role)
        tok.save_pretrained(root / role)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
    return root


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_the_training_plan_matches_the_measured_peak_on_the_cpu(mode, mid_model, organism, ft_data, tmp_path):
    """Full fine-tuning peaks in training (moments, gradients, anchor, W_aligned), LoRA while its anchor is built
    (the whole direction beside it): the plan's peak is the measured one within 10 % either way."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    small = tmp_path / "small"
    small.mkdir()
    for role in ("base", "aligned"):
        (small / role).symlink_to(organism[role])
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(mid_model), str(small), str(ft_data), mode],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.9 <= r["peak"] / r["plan"] <= 1.1, r


def test_plan_from_a_bare_config_trains_and_writes_nothing(mid_model, ft_data, tmp_path, capsys):
    """``--plan`` reads shapes only (a config.json alone is enough), needs no anchor for SFT, and writes nothing."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((mid_model / "aligned" / "config.json").read_text())
    out = tmp_path / "run"
    assert train_main(["--aligned", str(bare), "--method", "sft", "--mode", "full", "--plan",
                       "--output_dir", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "training plan for" in text and "10,768,512 trainable parameters" in text and "AdamW moments" in text
    assert "no --data given" in text and not out.exists()
    full = training_plan(AsftConfig(aligned=str(mid_model / "aligned"), data=str(ft_data), mode="full",
                                    method="sft", output_dir=str(out)))  # fmt: skip
    lora = training_plan(AsftConfig(aligned=str(bare), method="sft", output_dir=str(out)))
    assert full.parts["gradients"] == full.model_bytes and full.parts["AdamW moments"] == 2 * full.model_bytes
    assert lora.trainable == 6 * 2 * 8 * (384 + 384)  # q_proj and v_proj, r 8, in six layers
    assert "anchor (host)" not in lora.parts  # plain SFT without --base holds no anchor
    assert full.seq < 512 and "longest example" in full.seq_note
    assert not out.exists()


def test_plan_errors_name_the_problem(tmp_path, mid_model):
    with pytest.raises(ValueError, match="no config.json to plan from"):
        training_plan(AsftConfig(aligned=str(tmp_path), output_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="match no weight"):
        training_plan(AsftConfig(aligned=str(mid_model / "aligned"), target_modules=["nope"],
                                 output_dir=str(tmp_path / "o")))  # fmt: skip
