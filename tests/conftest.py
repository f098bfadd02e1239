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
