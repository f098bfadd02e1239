"""Geometry of directions: norms, cosines (whole model, per tensor / layer / module type) and a random null.

Whole-model quantities are sums of per-tensor dot products accumulated in float64; no parameter vector
is ever concatenated. The random null answers "is cos(d_aligned, d_harm) ≈ 0 more or less orthogonal
than chance?": the distribution of cos(reference, r_k) over K seeded Gaussian directions of the same
shapes, generated tensor by tensor and never stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .tensors import TensorStore, open_store

GROUPINGS = ("model", "tensor", "layer", "module")
_MODULE_PATTERNS = (
    ("q", r"q_proj|\.query\b|\.wq\b"), ("k", r"k_proj|\.key\b|\.wk\b"), ("v", r"v_proj|\.value\b|\.wv\b"),
    ("o", r"o_proj|out_proj|\.wo\b|attn\.c_proj"), ("mlp", r"mlp|gate_proj|up_proj|down_proj|feed_forward|\.fc\d"),
    ("embeddings", r"embed|wte|wpe"), ("head", r"lm_head|output\.weight$"), ("norm", r"norm|ln_"),
)  # fmt: skip


def module_type(name: str) -> str:
    """q, k, v, o, mlp, embeddings, head, norm or other."""
    for label, pat in _MODULE_PATTERNS:
        if re.search(pat, name):
            return label
    return "other"


def layer_of(name: str) -> str:
    m = re.search(r"(?:layers|h|blocks|layer)\.(\d+)\.", name)
    if m:
        return f"layer {int(m.group(1)):03d}"
    return module_type(name)


def group_of(name: str, by: str) -> str:
    if by == "model":
        return "model"
    if by == "tensor":
        return name
    if by == "layer":
        return layer_of(name)
    if by == "module":
        return module_type(name)
    raise ValueError(f"Unknown grouping {by!r}. Available: {', '.join(GROUPINGS)}")


def _names(a, b=None) -> list[str]:
    na = a.names() if hasattr(a, "names") else a.keys()
    if b is None:
        return list(na)
    nb = set(b.names() if hasattr(b, "names") else b.keys())
    missing = [n for n in na if n not in nb]
    if missing:
        raise KeyError(f"{_origin(b)} has no tensor {missing[0]!r} ({len(missing)} of {len(na)} names missing)")
    return list(na)


def _origin(x) -> str:
    return getattr(getattr(x, "store", x), "origin", "<direction>")


def _as(x):
    """Directions and stores are used as they are; paths, state dicts and models become stores."""
    return x if hasattr(x, "get") and (hasattr(x, "names") or isinstance(x, TensorStore)) else open_store(x)


def _dot64(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.dot(x.reshape(-1).double(), y.reshape(-1).to(x.device).double()))


def dot(a, b, names: list[str] | None = None) -> float:
    """⟨a, b⟩ summed tensor by tensor over ``a``'s names (or ``names``), in float64."""
    a, b = _as(a), _as(b)
    return sum(_dot64(a.get(n), b.get(n)) for n in (names or _names(a, b)))


def norm(a, names: list[str] | None = None) -> float:
    a = _as(a)
    return float(np.sqrt(sum(_dot64(a.get(n), a.get(n)) for n in (names or _names(a)))))


def cosine(a, b, names: list[str] | None = None) -> float:
    """Whole-model cosine similarity (0 when either side is zero)."""
    a, b = _as(a), _as(b)
    ns = names or _names(a, b)
    ab = aa = bb = 0.0
    for n in ns:
        x, y = a.get(n), b.get(n)
        ab += _dot64(x, y)
        aa += _dot64(x, x)
        bb += _dot64(y, y)
    return ab / np.sqrt(aa * bb) if aa > 0 and bb > 0 else 0.0


@dataclass
class CosineRow:
    """One group of a cosine table: cos(a, b) over the group's tensors and both norms."""

    group: str
    cos: float
    norm_a: float
    norm_b: float
    numel: int


def cosine_table(a, b, by: str = "module") -> list[CosineRow]:
    """cos(a, b) per group ("model", "tensor", "layer" or "module" type), one pass over the tensors."""
    if by not in GROUPINGS:
        raise ValueError(f"Unknown grouping {by!r}. Available: {', '.join(GROUPINGS)}")
    a, b = _as(a), _as(b)
    acc: dict[str, list[float]] = {}
    for n in _names(a, b):
        x, y = a.get(n), b.get(n)
        g = acc.setdefault(group_of(n, by), [0.0, 0.0, 0.0, 0])
        g[0] += _dot64(x, y)
        g[1] += _dot64(x, x)
        g[2] += _dot64(y, y)
        g[3] += x.numel()
    rows = []
    for g, (ab, aa, bb, k) in acc.items():
        c = ab / np.sqrt(aa * bb) if aa > 0 and bb > 0 else 0.0
        rows.append(CosineRow(g, float(c), float(np.sqrt(aa)), float(np.sqrt(bb)), int(k)))
    return sorted(rows, key=lambda r: r.group)


def relative_norm(d, theta) -> float:
    """‖d‖ / ‖θ‖ over the direction's tensors."""
    d = _as(d)
    ns = _names(d)
    return norm(d, ns) / norm(_as(theta), ns)


@dataclass
class NullDistribution:
    """Cosines between a reference direction and K seeded Gaussian directions of the same shapes."""

    cosines: np.ndarray
    seeds: list[int]

    @property
    def mean(self) -> float:
        return float(self.cosines.mean())

    @property
    def std(self) -> float:
        return float(self.cosines.std(ddof=1)) if len(self.cosines) > 1 else 0.0

    @property
    def abs_mean(self) -> float:
        return float(np.abs(self.cosines).mean())

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.cosines, q))

    def percentile_of_abs(self, c: float) -> float:
        """% of null |cos| values at or below |c|: near 0 means more orthogonal than chance."""
        return float(100.0 * np.mean(np.abs(self.cosines) <= abs(c)))

    def summary(self) -> dict:
        return {"k": len(self.cosines), "mean": self.mean, "std": self.std, "abs_mean": self.abs_mean,
                "q025": self.quantile(0.025), "q975": self.quantile(0.975)}  # fmt: skip


def random_null(reference, k: int = 20, seed: int = 0) -> NullDistribution:
    """cos(reference, r_i) for i < k, r_i the seeded Gaussian direction :func:`landscape.directions.random_like`
    would give with seed ``seed + i`` (generated tensor by tensor, never stored)."""
    from .directions.build import gaussian_tensor

    ref = _as(reference)
    names = _names(ref)
    seeds = [seed + i for i in range(k)]
    ab = np.zeros(k)
    bb = np.zeros(k)
    aa = 0.0
    for n in names:
        x = ref.get(n).float().cpu()
        aa += _dot64(x, x)
        for i, s in enumerate(seeds):
            r = gaussian_tensor(n, tuple(x.shape), s)
            ab[i] += _dot64(x, r)
            bb[i] += _dot64(r, r)
    cos = ab / np.sqrt(aa * bb) if aa > 0 else np.zeros(k)
    return NullDistribution(cos, seeds)
