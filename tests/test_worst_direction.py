"""Worst-case directions (``d_worst``): the steepest descent of a compliance loss at the aligned model."""

from __future__ import annotations

import json

import pytest
import torch


def _shifted_loss(model, tok, pairs, d, eps):
    from landscape.directions.gradient import compliance_loss

    sd = model.state_dict()
    keep = {n: sd[n].clone() for n in d.names()}
    try:
        with torch.no_grad():
            for n, t in d.items():
                sd[n].add_(eps * t.to(sd[n].dtype))
        return compliance_loss(model, tok, pairs)
    finally:
        with torch.no_grad():
            for n, t in keep.items():
                sd[n].copy_(t)


def test_d_worst_is_minus_the_gradient_of_the_compliance_loss(organism):
    """A central finite difference along d_worst equals −‖d_worst‖² (the directional derivative of the loss along
    minus its own gradient), and a step along +d_worst lowers the loss of the compliance targets."""
    from landscape.directions.gradient import compliance_loss, gradient_direction
    from landscape.loading import load_model
    from landscape.provenance import checkpoint_hash

    pairs = organism.worst_pairs()
    d = gradient_direction(organism["aligned"], pairs)
    model, tok = load_model(organism["aligned"])
    g2 = sum(float(t.double().square().sum()) for _, t in d.items())
    eps = 1e-3 / g2**0.5
    fd = (_shifted_loss(model, tok, pairs, d, eps) - _shifted_loss(model, tok, pairs, d, -eps)) / (2 * eps)
    assert fd == pytest.approx(-g2, rel=1e-3)
    assert d.meta["loss"] == pytest.approx(compliance_loss(model, tok, pairs), rel=1e-6)
    assert _shifted_loss(model, tok, pairs, d, 10 * eps) < d.meta["loss"]
    assert d.kind == "gradient" and d.meta["n_pairs"] == len(pairs)
    assert d.meta["sources"][0]["sha256"] == checkpoint_hash(organism["aligned"])  # check_source accepts it
    assert set(d.names()) == set(organism.direction("d_aligned", "none").names())


def test_worst_pairs_are_disjoint_from_the_evaluation_prompts(organism):
    from landscape.data import load_prompts

    pairs = organism.worst_pairs()
    assert len(pairs) >= 32 and all(t.startswith("Sure, here is how to") for _, t in pairs)
    assert not {p for p, _ in pairs} & set(load_prompts(organism.eval_prompts_csv))


def test_compute_cli_writes_a_layer_normalised_worst_direction(organism, tmp_path, capsys):
    from landscape.directions import load_direction, normalize, random_like
    from landscape.directions.__main__ import main
    from landscape.geometry import relative_norm

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"instruction": p, "target": t} for p, t in organism.worst_pairs()[:16]]))
    out = tmp_path / "dw"
    argv = ["compute", "--gradient_at", str(organism["aligned"]), "--pairs", str(pairs), "--normalization", "layer"]
    assert main(argv + ["--out", str(out)]) == 0
    assert "d_worst" in capsys.readouterr().out
    d = load_direction(out)
    assert d.meta["normalization"] == "layer" and d.meta["n_pairs"] == 16
    # each tensor as large as the weight it moves (the norms' 1-D weights blacklisted), as a random direction is
    rand = normalize(random_like(organism["aligned"], seed=0), organism["aligned"], "layer")
    assert relative_norm(d, organism["aligned"]) == pytest.approx(relative_norm(rand, organism["aligned"]), rel=1e-5)


def test_epl_adds_a_d_worst_row_on_the_organism(organism, organism_cache, tmp_path):
    from landscape.epl import EplArgs, run

    out = tmp_path / "epl"
    run(EplArgs(
        preset="tiny", cache_dir=str(organism_cache), worst=True, random=1, limit=16, max_new_tokens=8,
        bootstrap=0, out=str(out), progress=False,
    ))  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    rows = {(r["direction"], r["side"]): r for r in res["rows"]}
    assert {("d_worst", 1), ("d_worst", -1), ("random-0", 1)} <= set(rows)
    assert {d["name"]: d["kind"] for d in res["directions"]}["d_worst"] == "gradient"
    # towards compliance is where the worst case is worst: d_worst's + edge lies inside random-0's on the same side
    assert rows[("d_worst", 1)]["epl"] < rows[("random-0", 1)]["epl"]
