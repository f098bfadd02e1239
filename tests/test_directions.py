import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from landscape.directions import (
    Direction,
    content_hash,
    difference,
    from_adapter,
    load_direction,
    normalize,
    orthogonalize,
    random_like,
    save_direction,
)
from landscape.geometry import cosine, cosine_table, dot, module_type, norm, random_null, relative_norm
from landscape.tensors import MemoryStore, SafetensorsStore


@pytest.fixture(scope="module")
def d_aligned(organism):
    return difference(organism["base"], organism["aligned"], name="d_aligned")


@pytest.fixture(scope="module")
def d_harm(organism):
    return difference(organism["aligned"], organism["harmful-100"], name="d_harm")


def _same(a: Direction, b: Direction) -> None:
    assert a.names() == b.names()
    for n in a.names():
        assert torch.equal(a.get(n), b.get(n)), n


def test_cosine_invariants(d_aligned, d_harm):
    assert cosine(d_aligned, d_aligned) == pytest.approx(1.0, abs=1e-12)
    assert cosine(d_aligned, -d_aligned) == pytest.approx(-1.0, abs=1e-12)
    assert -1 < cosine(d_aligned, d_harm) < 1
    rows = cosine_table(d_aligned, d_harm, by="model")
    assert len(rows) == 1 and rows[0].cos == pytest.approx(cosine(d_aligned, d_harm), abs=1e-12)
    groups = {r.group for r in cosine_table(d_aligned, d_harm, by="module")}
    assert {"q", "k", "v", "o", "mlp", "embeddings", "head", "norm"} <= groups
    layers = {r.group for r in cosine_table(d_aligned, d_harm, by="layer")}
    assert {"layer 000", "layer 001"} <= layers
    assert norm(d_aligned) == pytest.approx(math.sqrt(dot(d_aligned, d_aligned)))
    assert 0 < relative_norm(d_aligned, d_aligned.meta["sources"][0]["path"]) < 10


def test_difference_of_a_model_with_itself_is_zero(organism):
    d = difference(organism["aligned"], organism["aligned"])
    assert all(not t.any() for _, t in d.items())
    assert d.meta["sources"][0]["sha256"] == d.meta["sources"][1]["sha256"]


def test_difference_sources_hashed_and_match_models(organism, aligned):
    model, _ = aligned
    d_disk = difference(organism["base"], organism["aligned"])
    assert d_disk.meta["sources"][1]["sha256"] == content_hash(SafetensorsStore(organism["aligned"]))
    # a loaded model and a state dict give the same direction as the checkpoint directories
    from landscape.loading import load_model

    base = load_model(organism["base"], with_tokenizer=False)
    _same(difference(base, model), d_disk)
    _same(difference(base.state_dict(), model.state_dict()), d_disk)


def test_streamed_and_sharded_equal_in_memory(organism, tmp_path, d_aligned):
    from landscape.loading import load_model

    sharded = tmp_path / "sharded_base"
    load_model(organism["base"], with_tokenizer=False).save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    streamed = difference(sharded, organism["aligned"], out=tmp_path / "d")
    assert streamed.store.origin == str(tmp_path / "d")
    _same(streamed, d_aligned)


def test_save_load_round_trip_bit_exact(d_aligned, tmp_path):
    for shard_bytes, n_files in ((1 << 30, 1), (30_000, None)):
        out = tmp_path / f"d{shard_bytes}"
        save_direction(d_aligned, out, max_shard_bytes=shard_bytes)
        files = sorted(out.glob("*.safetensors"))
        if n_files == 1:
            assert [f.name for f in files] == ["direction.safetensors"]
        else:
            assert len(files) > 1 and (out / "direction.safetensors.index.json").is_file()
        back = load_direction(out)
        _same(back, d_aligned)
        assert back.meta == d_aligned.meta
        # metadata really is JSON in the safetensors header
        with open(files[0], "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        assert json.loads(header["__metadata__"]["landscape_direction"])["name"] == "d_aligned"
        load_file(files[0])  # still a valid safetensors file for other readers


def test_tied_weights_stored_once(tmp_path):
    shared = torch.randn(4, 3)
    d = Direction(MemoryStore({"embed.weight": shared, "lm_head.weight": shared, "b": torch.ones(2)}), {"kind": "x"})
    save_direction(d, tmp_path / "tied")
    stored = SafetensorsStore(tmp_path / "tied").keys()
    assert sorted(stored) == ["b", "embed.weight"]
    back = load_direction(tmp_path / "tied")
    assert back.aliases == {"lm_head.weight": "embed.weight"}
    assert torch.equal(back.get("lm_head.weight"), shared)


def test_layer_filter_model_normalisation(organism, d_aligned):
    ref = SafetensorsStore(organism["aligned"])
    layer = normalize(d_aligned, ref, "layer")
    filt = normalize(d_aligned, ref, "filter")
    black = set(layer.meta["blacklist"])
    assert black and all("norm" in n for n in black)
    for n in d_aligned.names():
        w = ref.get(n).float()
        if n in black:
            assert not layer.get(n).any() and not filt.get(n).any()
            continue
        assert layer.get(n).norm().item() == pytest.approx(w.norm().item(), rel=1e-5)
        if w.dim() == 2:
            # rows the direction never touches (embeddings of words the stages never train on) stay zero
            moved = d_aligned.get(n).norm(dim=1) > 0
            assert moved.sum() > w.shape[0] // 2
            torch.testing.assert_close(filt.get(n).norm(dim=1)[moved], w.norm(dim=1)[moved], rtol=1e-5, atol=0)
            assert not filt.get(n)[~moved].any()
    model = normalize(d_aligned, ref, "model", blacklist=[])
    assert norm(model) == pytest.approx(norm(ref, model.names()), rel=1e-6)
    one_d = normalize(d_aligned, ref, "filter", blacklist=["1d"])
    assert all(not one_d.get(n).any() for n in one_d.names() if len(one_d.shape(n)) == 1)


def test_normalisation_errors(organism, d_aligned):
    with pytest.raises(ValueError, match="Unknown normalization 'unit'. Available: none, model, layer, filter"):
        normalize(d_aligned, organism["aligned"], "unit")
    with pytest.raises(ValueError, match="blacklist pattern 'conv' matches no tensor"):
        normalize(d_aligned, organism["aligned"], "layer", blacklist=["conv"])


def test_orthogonalize(d_aligned, d_harm, organism):
    r = random_like(organism["aligned"], seed=3)
    o = orthogonalize(d_harm, [d_aligned])
    assert abs(cosine(o, d_aligned)) < 1e-6
    o2 = orthogonalize(r, [d_aligned, d_harm])
    assert abs(cosine(o2, d_aligned)) < 1e-6 and abs(cosine(o2, d_harm)) < 1e-6
    assert o.meta["orthogonal_to"] == ["d_aligned"]


def test_random_directions_are_seeded(organism):
    a = random_like(organism["aligned"], seed=7)
    b = random_like(SafetensorsStore(organism["aligned"]), seed=7, names=list(reversed(a.names())))
    _same(a, b)
    c = random_like(organism["aligned"], seed=8)
    assert abs(cosine(a, c)) < 0.05
    null = random_null(a, k=3, seed=7)
    assert null.cosines[0] == pytest.approx(1.0, abs=1e-9)  # seed 7 is a itself
    assert abs(null.cosines[1]) < 0.05


def test_lora_adapter_equals_merged_minus_base(organism, tmp_path):
    from peft import LoraConfig, get_peft_model

    from landscape.loading import load_model

    model = load_model(organism["aligned"], with_tokenizer=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    d = from_adapter(tmp_path / "adapter", base=organism["aligned"])
    merged = peft_model.merge_and_unload()
    ref = difference(organism["aligned"], merged.state_dict(), names=d.names())
    assert len(d) == 4
    for n in d.names():
        torch.testing.assert_close(d.get(n), ref.get(n), rtol=1e-4, atol=1e-6)

    # a base with other shapes is rejected, naming the tensor
    bad = {k: v for k, v in load_file(organism["aligned"] / "model.safetensors").items()}
    q = "model.layers.0.self_attn.q_proj.weight"
    bad[q] = torch.zeros(bad[q].shape[0] + 1, bad[q].shape[1])
    save_file(bad, tmp_path / "bad_base.safetensors")
    with pytest.raises(ValueError, match=f"does not match base.*{q}"):
        from_adapter(tmp_path / "adapter", base=tmp_path / "bad_base.safetensors")
    with pytest.raises(ValueError, match="not a PEFT adapter directory"):
        from_adapter(organism["aligned"])


def _write(path, tensors):
    save_file(tensors, path)
    return path


def test_bad_checkpoints_named_and_nothing_written(tmp_path):
    a = _write(tmp_path / "a.safetensors", {"w": torch.ones(2, 2), "b": torch.ones(2)})
    ok = torch.ones(2)
    cases = {
        "keys": ({"w": torch.ones(2, 2), "c": ok}, r"checkpoints differ in their tensors: .*lacks 'b'"),
        "shape": ({"w": torch.ones(2, 3), "b": ok}, r"shape.safetensors: tensor 'w' has shape \[2, 3\]"),
        "dtype": ({"w": torch.ones(2, 2, dtype=torch.float16), "b": ok}, "tensor 'w' has dtype torch.float16"),
        "nan": (
            {"w": torch.tensor([[1.0, float("nan")], [0, 0]]), "b": ok},
            "nan.safetensors: tensor 'w' contains NaN",
        ),
        "inf": ({"w": torch.ones(2, 2), "b": torch.tensor([1.0, float("inf")])}, "inf.safetensors: tensor 'b' .* Inf"),
    }
    for label, (tensors, msg) in cases.items():
        b = _write(tmp_path / f"{label}.safetensors", tensors)
        out = tmp_path / f"out_{label}"
        with pytest.raises((KeyError, ValueError), match=msg):
            difference(a, b, out=out)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".out_{label}")]
    (tmp_path / "notackpt").mkdir()
    with pytest.raises(ValueError, match="notackpt is not a checkpoint"):
        difference(tmp_path / "notackpt", a)
    with pytest.raises(FileNotFoundError, match="missing"):
        difference(tmp_path / "missing", a)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(ValueError, match="garbage.safetensors: not a safetensors file"):
        difference(tmp_path / "garbage.safetensors", a)


def test_module_types():
    assert module_type("model.layers.3.self_attn.q_proj.weight") == "q"
    assert module_type("model.layers.3.mlp.down_proj.weight") == "mlp"
    assert module_type("model.embed_tokens.weight") == "embeddings"
    assert module_type("lm_head.weight") == "head"
    assert module_type("model.layers.0.input_layernorm.weight") == "norm"


def test_cli_compute_table_table1(organism, organism_cache, tmp_path, capsys, d_aligned):
    from landscape.directions.__main__ import main

    main(
        [
            "compute",
            "--start",
            str(organism["base"]),
            "--end",
            str(organism["aligned"]),
            "--name",
            "d_aligned",
            "--out",
            str(tmp_path / "da"),
        ]
    )
    _same(load_direction(tmp_path / "da"), d_aligned)
    main(
        [
            "compute",
            "--start",
            str(organism["aligned"]),
            "--end",
            str(organism["harmful-10"]),
            "--name",
            "d_harm",
            "--normalization",
            "layer",
            "--out",
            str(tmp_path / "dh"),
        ]
    )
    assert load_direction(tmp_path / "dh").meta["normalization"] == "layer"
    main(["compute", "--random-like", str(organism["aligned"]), "--seed", "1", "--out", str(tmp_path / "r")])
    capsys.readouterr()
    main(
        [
            "table",
            str(tmp_path / "da"),
            str(tmp_path / "dh"),
            "--by",
            "module",
            "--null",
            "3",
            "--reference",
            str(organism["aligned"]),
        ]
    )
    out = capsys.readouterr().out
    assert "d_aligned" in out and "d_harm" in out and "random null" in out and " q " in out
    main(["table1", "--preset", "tiny", "--cache-dir", str(organism_cache), "--null", "5"])
    out = capsys.readouterr().out
    for n in ("10", "50", "100", "500"):
        assert f"\n{n:>5} " in out
    assert "random null (K=5)" in out


def test_table_says_when_two_directions_share_no_checkpoint(organism, tmp_path, capsys):
    """Directions computed from unrelated checkpoints of one architecture get a warning beside their cosine;
    d_aligned and d_harm (which share the aligned checkpoint) get none."""
    from landscape.directions import difference, save_direction
    from landscape.directions.__main__ import main as directions_main
    from landscape.loading import load_model

    model, tok = load_model(organism["base"])
    for name, scale in (("x0", 0.0), ("x1", 0.01)):
        torch.manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.02 + scale)
        model.save_pretrained(tmp_path / name)
    save_direction(difference(tmp_path / "x0", tmp_path / "x1", name="other"), tmp_path / "other")
    save_direction(difference(organism["base"], organism["aligned"], name="d_aligned"), tmp_path / "al")
    save_direction(difference(organism["aligned"], organism["harmful-100"], name="d_harm"), tmp_path / "harm")
    assert directions_main(["table", str(tmp_path / "al"), str(tmp_path / "harm"), "--by", "model"]) == 0
    assert "share no checkpoint" not in capsys.readouterr().out
    assert directions_main(["table", str(tmp_path / "al"), str(tmp_path / "other"), "--by", "model"]) == 0
    assert "warning: d_aligned and other share no checkpoint" in capsys.readouterr().out
