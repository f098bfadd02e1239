"""The pre-registered check that the organism can test AsFT's premise, run by every full build and stored with
it (``premise.json``).

AsFT regularises the part of a LoRA update that lies *outside* the alignment direction's subspace. That
protects safety only if harmful updates lie mostly outside it too: the paper's Table 1 finds
cos(d_aligned, d_harm) no larger than chance. Written down before the numbers were seen, the check is:

1. cos(d_aligned, d_harm-N) for every harmful fine-tune N, beside a null of 20 seeded random directions
   (95 % band, raw directions, all tensors);
2. per q_proj / v_proj module (AsFT's LoRA targets), the share of a harmful update's energy inside the top-8
   left singular subspace of d_aligned's module (V's top-k, as the projector form uses it), beside 20
   seeded random subspaces of rank 8 (null mean ≈ 8 / d_out, and its 95th percentile). The harmful update
   is d_harm-100, which V never saw; the benign fine-tune's update is reported beside it.

The premise holds on the organism when |cos(d_aligned, d_harm-100)| lies inside the null's 95 % band and at
most half of the modules put d_harm-100's energy in V's top-8 above the null's 95th percentile.
Nothing in the world was tuned toward either outcome; the result is reported as it comes out.
"""

from __future__ import annotations

from pathlib import Path

from ..io import read_json

K = 8
MODULES = ("q_proj", "v_proj")
DRAWS = 20
HEADLINE = "harmful-100"


def premise_check(org) -> dict:
    """Compute the check on a built organism (see the module docstring)."""
    from ..directions import difference
    from ..geometry import cosine, random_null, subspace_share, summarise_shares, top_left_singular

    d_aligned = difference(org["base"], org["aligned"], name="d_aligned")
    null = random_null(d_aligned, k=DRAWS, seed=1000).summary()
    updates = {s: difference(org["aligned"], org[s], name=s) for s in [*org.harmful_stages, "benign"]}
    cos = {s: cosine(d_aligned, u) for s, u in updates.items()}
    modules = [n for n in d_aligned.names() if any(f".{m}." in n for m in MODULES) and n.endswith("weight")]
    U = {n: top_left_singular(d_aligned.get(n).double(), K) for n in modules}
    shares = {}
    for s, u in updates.items():
        per = {n: row for n in modules if (row := subspace_share(U[n], u.get(n), n, DRAWS)) is not None}
        shares[s] = {"modules": per, "summary": summarise_shares(per)}
    headline = HEADLINE if HEADLINE in shares else max(org.harmful_stages, key=lambda st: int(st.split("-")[1]))
    head = shares[headline]["summary"]
    cos_inside = null["q025"] <= cos[headline] <= null["q975"]
    few_above = head["above_null_q95"] <= head["modules"] / 2
    return {
        "definition": {"k": K, "modules": list(MODULES), "draws": DRAWS, "headline_update": headline},
        "cosine": cos,
        "cosine_null": null,
        "subspace_share": shares,
        "holds": bool(cos_inside and few_above),
        "cos_inside_null": bool(cos_inside),
        "share_at_most_half_above_null": bool(few_above),
    }


def write_premise(org, path: Path) -> dict:

    from ..io import atomic_write_json

    if path.is_file():
        return read_json(path)
    result = premise_check(org)
    atomic_write_json(path, result)
    return result
