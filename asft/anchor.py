"""The AsFT anchor: d_aligned restricted to the adapted modules, with the report that verifies it.

An anchor is only as good as the evidence that d_aligned marks a narrow safety basin on *this* model.
That evidence is the report ``python -m landscape.epl`` writes (``results.json``: EPL along d_aligned,
d_harm and random directions, and the cosine table). :func:`verify_report` defines "passing":

1. the report has EPL rows for ``d_aligned`` and ``d_harm``;
2. d_harm's nearer edge was found (not censored) and is > 0;
3. the basin is narrow along d_harm: min(EPL d_aligned) / min(EPL d_harm) ≥ ``min_ratio``. The default, 13, is
   the smallest ratio at which AsFT's benefit has been reported (the paper: 13, 44 and 67× on Llama-2, Qwen-2 and
   Gemma-2). Every anchor measured in ``figures/README.md`` lies below it (2.0–3.2 on the synthetic organism,
   2.6 and 5.0 on SmolLM2), and at those ratios AsFT did no better than a plain L2 penalty;
4. the report measured the same checkpoints: the content hashes of the base and aligned checkpoints in
   the report's d_aligned metadata equal the anchor's (when both have them).

Training refuses an anchor without a passing report unless the caller overrides; the report and the
decision are stored with the trained model (``anchor_verification.json``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .regularizer import ModuleAnchor, make_module_anchor

log = logging.getLogger(__name__)
DEFAULT_MIN_RATIO = 13.0  # see the module doc and figures/README.md (AsFT's gate, on evidence)


class AnchorError(ValueError):
    pass


@dataclass
class Verification:
    """The outcome of checking a report against an anchor."""

    passed: bool
    reasons: list[str]
    ratio: float | None = None
    report_path: str | None = None
    overridden: bool = False
    report: dict | None = None
    evidence: dict | None = None

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "ratio": self.ratio,
            "report_path": self.report_path,
            "overridden": self.overridden,
            "evidence": self.evidence,
        }


@dataclass
class Anchor:
    """Per-module alignment directions plus provenance and verification.

    Attributes:
        modules: weight name -> :class:`~asft.regularizer.ModuleAnchor`.
        sources: the d_aligned metadata's sources (paths and content hashes of base and aligned).
        verification: the report check (None until :func:`verify`).
    """

    modules: dict[str, ModuleAnchor]
    sources: list[dict] = field(default_factory=list)
    verification: Verification | None = None

    def hashes(self) -> dict[str, str]:
        return {s.get("role"): s["sha256"] for s in self.sources if s.get("sha256")}


def module_weight_names(names: list[str], target_modules: list[str]) -> list[str]:
    """Weight names of the modules whose last name component is one of ``target_modules`` (peft's rule)."""
    out = []
    for n in names:
        if not n.endswith(".weight"):
            continue
        module = n[: -len(".weight")]
        if module.split(".")[-1] in target_modules or any(re.fullmatch(t, module) for t in target_modules if "*" in t):
            out.append(n)
    return out


def load_anchor(
    direction=None,
    base: str | None = None,
    aligned: str | None = None,
    target_modules: list[str] | tuple[str, ...] = ("q_proj", "v_proj"),
    k: int | None = 8,
    seed: int = 0,
) -> Anchor:
    """Build an anchor from a saved d_aligned direction (path or Direction), or from base + aligned checkpoints.

    Raises:
        AnchorError: when no target module is found (the error lists the modules the direction has).
    """
    from landscape.directions import Direction, difference, load_direction

    if direction is None:
        if base is None or aligned is None:
            raise AnchorError("give a d_aligned direction, or both base and aligned checkpoints")
        d = difference(base, aligned, name="d_aligned")
    else:
        d = direction if isinstance(direction, Direction) else load_direction(direction)
    names = module_weight_names(d.names(), list(target_modules))
    if not names:
        have = sorted({n[: -len(".weight")].split(".")[-1] for n in d.names() if n.endswith(".weight")})
        raise AnchorError(
            f"the anchor has no module among target modules {list(target_modules)}; modules it has: {', '.join(have)}"
        )
    try:
        modules = {n: make_module_anchor(n, d.get(n), k=k, seed=seed) for n in names}
    except ValueError as e:
        raise AnchorError(f"{d.store.origin}: {e}") from None
    return Anchor(modules, list(d.meta.get("sources", [])))


def _hashes(sources: list[dict]) -> dict[str, str]:
    return {s.get("role"): s["sha256"] for s in sources if s.get("sha256")}


def verify_report(
    anchor: Anchor,
    report_path: str | Path | None,
    min_ratio: float = DEFAULT_MIN_RATIO,
    model_dir: str | Path | None = None,
) -> Verification:
    """Check an EPL report (``results.json`` of ``python -m landscape.epl``) against the anchor; see the module doc."""
    from landscape.search import REPORT_FILE, EplReport

    if report_path is None:
        return Verification(False, ["no verification report given"])
    p = Path(report_path)
    if p.is_dir():
        p = p / REPORT_FILE
    try:
        rep = EplReport.load(p)
    except (FileNotFoundError, ValueError) as e:
        return Verification(False, [str(e)], report_path=str(p))
    reasons = []
    ratio = None
    harm_rows, al_rows = rep.by_direction("d_harm"), rep.by_direction("d_aligned")
    if not harm_rows or not al_rows:
        reasons.append("the report has no EPL rows for both d_aligned and d_harm")
    else:
        if any(r.center_unsafe for r in harm_rows + al_rows):
            reasons.append(f"the report's centre is already unsafe (ASR {rep.center_asr:.1f}%): no basin to anchor in")
            return Verification(False, reasons, None, str(p), report=rep.to_json())
        reasons += contradictions(rep)
        harm = min(harm_rows, key=lambda r: r.epl)
        al = min(r.epl for r in al_rows)
        if harm.censored or harm.epl <= 0:
            reasons.append(f"d_harm's edge was not found (EPL {harm.epl:.4g}, censored={harm.censored})")
        else:
            ratio = al / harm.epl
            if ratio < min_ratio:
                reasons.append(
                    f"EPL ratio d_aligned/d_harm = {ratio:.2f} < {min_ratio:g}: the basin is not narrow along d_harm"
                    + (
                        " (AsFT's benefit has been reported at ratios of 13-67; at the 2.0-5.0 measured on this "
                        "toolkit's organisms it did no better than a plain L2 penalty: figures/README.md)"
                        if min_ratio == DEFAULT_MIN_RATIO
                        else ""
                    )
                )
    mine = anchor.hashes()
    for role, which in (("start", "base"), ("end", "aligned")):
        if role not in mine:
            reasons.append(f"the anchor carries no content hash of its {which} checkpoint (build it from checkpoints)")
    by_name = {d.get("name"): d for d in rep.directions}
    needed = {"d_aligned": ("start", "end"), "d_harm": None}
    for name, roles in needed.items():
        d = by_name.get(name)
        theirs = _hashes(d.get("sources", [])) if d else {}
        if d is None:
            reasons.append(f"the report does not say which checkpoints its {name} came from (no directions metadata)")
            continue
        want = roles or (("start", "end") if "start" in theirs or "end" in theirs else ("base",))
        missing = [r for r in want if r not in theirs]
        if missing:
            reasons.append(f"the report's {name} carries no content hash of its {'/'.join(missing)} checkpoint")
        if name == "d_aligned":
            for role in ("start", "end"):
                if role in mine and role in theirs and mine[role] != theirs[role]:
                    which = "base" if role == "start" else "aligned"
                    reasons.append(f"the report measured another {which} checkpoint (content hashes differ)")
    if model_dir is not None and "end" in mine:
        from landscape.provenance import checkpoint_hash

        if checkpoint_hash(model_dir) != mine["end"]:
            reasons.append(f"the model being trained ({model_dir}) is not the anchor's aligned checkpoint")
    return Verification(not reasons, reasons, ratio, str(p), report=rep.to_json())


def contradictions(rep) -> list[str]:
    """Rows of an EPL report that its own curves contradict (a report edited by hand, or merged from two runs).

    On each side the EPL is the first crossing: every evaluated point nearer the centre than the row's EPL
    (by more than the search's resolution) must be safe (ASR ≤ threshold), a found edge must have an unsafe
    point within that resolution beyond it, and a censored side no unsafe point up to ``max_alpha``.
    """
    out = []
    tau, tol = rep.settings.threshold, rep.settings.tol
    for r in rep.rows:
        if r.center_unsafe or r.epl is None:
            continue
        sign = 1.0 if r.side in (1, "+") else -1.0
        side = "+" if sign > 0 else "-"
        pts = [(abs(a), v) for a, v in rep.curves.get(r.direction, []) if a * sign > 0]
        unsafe_before = [a for a, v in pts if v > tau and a < r.epl - tol]
        if unsafe_before:
            out.append(
                f"the report contradicts itself: its EPL {r.direction} {side} = {r.epl:.4g}, but its curve is "
                f"unsafe already at |alpha| = {min(unsafe_before):.4g}"
            )
        elif not r.censored and not any(v > tau and a <= r.epl + tol for a, v in pts):
            out.append(
                f"the report contradicts itself: its EPL {r.direction} {side} = {r.epl:.4g}, but its curve has no "
                f"unsafe point within {tol:g} beyond it"
            )
    return out


def subspace_evidence(anchor: Anchor, d_harm, draws: int = 20) -> dict:
    """Per anchored module: the share of a held-out harmful update's energy inside V's top-k subspace
    (‖U_kᵀH‖² / ‖H‖²), beside the same share for ``draws`` seeded random subspaces of rank k (the null).

    The regulariser only protects safety if harmful updates live near V's subspace; the null's mean is
    about k / d_out. Modules ``d_harm`` lacks are skipped.
    """
    from landscape.geometry import subspace_share, summarise_shares

    out = {}
    for name, a in anchor.modules.items():
        if a.U is None or name not in set(d_harm.names()):
            continue
        H = d_harm.get(name)
        if tuple(H.shape) != tuple(a.V.shape):
            continue
        row = subspace_share(a.U, H, name, draws)
        if row is not None:
            out[name] = row
    if out:
        out["_summary"] = summarise_shares(out)
    return out


def _report_d_harm(report: dict | None):
    """d_harm rebuilt from the report's recorded sources (checkpoints or adapter), when they are on disk."""
    from landscape.directions import difference, from_adapter

    if not report:
        return None
    for d in report.get("directions", []):
        if d.get("name") != "d_harm":
            continue
        roles = {s.get("role"): s.get("path") for s in d.get("sources", [])}
        try:
            if roles.get("start") and roles.get("end"):
                return difference(roles["start"], roles["end"], name="d_harm")
            if roles.get("adapter"):
                return from_adapter(roles["adapter"], base=roles.get("base"), name="d_harm", allow_foreign=True)
        except (OSError, ValueError, KeyError):
            return None
    return None


def verify(
    anchor: Anchor,
    report_path,
    allow_unverified: bool = False,
    min_ratio: float = DEFAULT_MIN_RATIO,
    model_dir: str | Path | None = None,
) -> Anchor:
    """Attach the verification to the anchor; raise unless it passes or ``allow_unverified`` is set.

    The verification also carries :func:`subspace_evidence` for the report's d_harm when its checkpoints are
    on disk: the evidence the regulariser relies on, beside a random-subspace null.
    """
    v = verify_report(anchor, report_path, min_ratio, model_dir)
    d_harm = _report_d_harm(v.report)
    if d_harm is not None:
        v.evidence = subspace_evidence(anchor, d_harm)
    if not v.passed:
        if not allow_unverified:
            raise AnchorError(
                "refusing to train on an unverified anchor: "
                + "; ".join(v.reasons)
                + " (run `python -m landscape.epl` on these checkpoints and pass its results.json, "
                "or override with --allow-unverified-anchor)"
            )
        v.overridden = True
        log.warning("training on an unverified anchor (override): %s", "; ".join(v.reasons))
    else:
        log.info("anchor verified: EPL ratio %.2f from %s", v.ratio, v.report_path)
    anchor.verification = v
    return anchor
