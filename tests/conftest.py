"""Session fixtures: the organism's `tiny` preset is built once per test session into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def organism_cache(tmp_path_factory) -> Path:
    # SAFETY_LANDSCAPE_TEST_CACHE lets a developer keep the tiny organism between test runs.
    keep = os.environ.get("SAFETY_LANDSCAPE_TEST_CACHE")
    return Path(keep) if keep else tmp_path_factory.mktemp("organism-cache")


@pytest.fixture(scope="session")
def organism(organism_cache):
    from landscape.organism import build_organism

    return build_organism("tiny", seed=0, cache_dir=organism_cache, progress=False)


@pytest.fixture(scope="session")
def aligned(organism):
    from landscape.loading import load_model

    return load_model(organism["aligned"])


def shared_file(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.is_file():
        pytest.skip(f"real-format data {p} is absent (it lives in ../shared/data beside the repository)")
    return p


@pytest.fixture(scope="session")
def epl_report(organism, organism_cache, tmp_path_factory):
    """One EPL run on the tiny organism (d_aligned, d_harm; defaults otherwise), shared by every test that reads
    a report: ``(report, out_dir)``."""
    from landscape.epl import EplArgs, run

    out = tmp_path_factory.mktemp("epl-report") / "epl"
    return run(EplArgs(preset="tiny", cache_dir=str(organism_cache), out=str(out), random=0, progress=False)), out


@pytest.fixture(scope="module")
def ft_data(tmp_path_factory):
    """AsFT-format fine-tuning data from the organism's world: 40 task records, a quarter of them harmful."""
    import json

    from landscape.organism import export

    p = tmp_path_factory.mktemp("ft") / "ft.json"
    p.write_text(json.dumps(export.finetune_records(40, 0.25, seed=0)))
    return p


def mid_llama(organism):
    """A seeded 10.8 M-parameter Llama (random weights) with the organism's tokenizer: big enough that what a test
    measures, not the interpreter, dominates the process's memory. Returns (model, tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from landscape.loading import load_tokenizer

    tok = load_tokenizer(organism["aligned"])
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=12,
        num_key_value_heads=12, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(cfg), tok
