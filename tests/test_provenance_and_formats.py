"""Directions know where they came from; checkpoints of every layout and dtype are read (or refused clearly)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from landscape.directions import difference, from_adapter, load_direction, save_direction
from landscape.provenance import ForeignDirectionError, check_source


def test_a_direction_of_other_checkpoints_is_refused_unless_allowed(organism, organism_cache, tmp_path, capsys):
    from landscape.epl import main

    foreign = difference(organism["base"], organism["benign"], name="foreign")  # same names and shapes
    save_direction(foreign, tmp_path / "foreign")
    own = difference(organism["aligned"], organism["harmful-10"], name="own")
    assert check_source(own, organism["aligned"]) is None  # aligned is one of its sources
    with pytest.raises(ForeignDirectionError, match="computed from other checkpoints"):
        check_source(foreign, organism["aligned"])
    base = ["--preset", "tiny", "--cache_dir", str(organism_cache), "--random", "0", "--limit", "8", "--no_progress"]
    argv = [*base, "--direction", str(tmp_path / "foreign"), "--out", str(tmp_path / "a")]
    assert main(argv) == 2
    assert "pass --allow_foreign_direction" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*argv[:-1], str(tmp_path / "b"), "--allow_foreign_direction"]) == 0
    assert "applied with --allow_foreign_direction" in capsys.readouterr().out
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert list(res["meta"]["foreign_directions"]) == ["foreign"]
    sources = load_direction(tmp_path / "foreign").meta["sources"]
    assert {s["model_type"] for s in sources} == {"llama"} and all(len(s["sha256"]) == 64 for s in sources)


def test_an_adapter_on_another_base_is_refused(organism, tmp_path):
    from peft import LoraConfig, get_peft_model

    from landscape.loading import load_model

    model = load_model(organism["base"], with_tokenizer=False)  # the adapter is trained on base ...
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(organism["base"])
    with pytest.raises(ForeignDirectionError, match="the adapter was trained on .*base, not on .*aligned"):
        from_adapter(tmp_path / "adapter", base=organism["aligned"])  # ... and applied to aligned
    d = from_adapter(tmp_path / "adapter", base=organism["aligned"], allow_foreign=True)
    assert d.meta["sources"][1]["role"] == "base" and len(d.meta["sources"][1]["sha256"]) == 64
    assert from_adapter(tmp_path / "adapter", base=organism["base"]).names()  # its own base: fine


def test_checkpoint_buffers_are_skipped_and_unprefixed_names_map(organism, aligned, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from landscape.perturb import Perturbation, weights_fingerprint

    # an older Llama save with per-layer rotary buffers: the direction has them, the model has no such parameter
    for stage in ("base", "aligned"):
        shutil.copytree(organism[stage], tmp_path / stage)
        sd = load_file(tmp_path / stage / "model.safetensors")
        sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.arange(4, dtype=torch.float32)
        save_file(sd, tmp_path / stage / "model.safetensors", metadata={"format": "pt"})
    d = difference(tmp_path / "base", tmp_path / "aligned")
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" in d.names()
    model, _ = aligned
    before = weights_fingerprint(model)
    with Perturbation(model, [d]) as pert:
        assert "model.layers.0.self_attn.rotary_emb.inv_freq" not in pert.params
        pert.set_((0.1,))
    assert weights_fingerprint(model) == before
    # GPT-2 as OpenAI released it: tensors named h.0... without the transformer. prefix
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    plain = {k.removeprefix("transformer."): v.clone() for k, v in gpt.state_dict().items() if "lm_head" not in k}
    for stage, delta in (("g0", 0.0), ("g1", 0.01)):
        (tmp_path / stage).mkdir()
        save_file({k: v + delta for k, v in plain.items()}, tmp_path / stage / "model.safetensors")
    d = difference(tmp_path / "g0", tmp_path / "g1")
    assert "h.0.attn.c_attn.weight" in d.names()
    with Perturbation(gpt, [d]) as pert:
        assert "h.0.attn.c_attn.weight" in pert.params
        pert.set_((1.0,))
        torch.testing.assert_close(gpt.transformer.h[0].attn.c_attn.weight, plain["h.0.attn.c_attn.weight"] + 0.01)


def test_mixed_and_fp8_dtypes_are_read(tmp_path):
    from landscape.tensors import SafetensorsStore

    tensors = {
        "a": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "b": torch.randn(4).to(torch.float8_e5m2),
        "c": torch.arange(6, dtype=torch.int32).to(torch.uint16),
        "d": torch.arange(6, dtype=torch.int64).to(torch.uint32),
        "e": torch.arange(6, dtype=torch.int64).to(torch.uint64),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    store = SafetensorsStore(tmp_path)
    for k, t in tensors.items():
        assert store.dtype(k) == t.dtype and torch.equal(store.get(k).view(torch.uint8), t.view(torch.uint8))
    other = tmp_path / "other"
    other.mkdir()
    save_file({k: (v.float() + 1).to(v.dtype) if v.is_floating_point() else v for k, v in tensors.items()},
              other / "model.safetensors")  # fmt: skip
    d = difference(tmp_path, other)  # floating tensors only, fp8 included, computed in fp32
    assert sorted(d.names()) == ["a", "b"] and d.get("a").dtype == torch.float32


def test_metadata_too_large_for_the_reserved_header_is_written_by_copy(tmp_path):
    from landscape.directions import Direction
    from landscape.tensors import HEADER_RESERVE, MemoryStore

    t = {"w": torch.randn(8, 8), "b": torch.randn(8)}
    big = {"name": "big", "kind": "difference", "note": "x" * (HEADER_RESERVE + 100)}
    save_direction(Direction(MemoryStore(t), big), tmp_path / "big")
    back = load_direction(tmp_path / "big")
    assert (
        back.meta["note"] == big["note"] and torch.equal(back.get("w"), t["w"]) and torch.equal(back.get("b"), t["b"])
    )
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["direction.safetensors"]  # no temp file left
