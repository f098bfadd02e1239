"""Geometry of directions: norms, cosines (whole model, per tensor / layer / module type) and a random null.

Whole-model quantities are sums of per-tensor dot products accumulated in float64; no parameter vector
is ever concatenated. The random null answers "is cos(d_aligned, d_harm) ≈ 0 more or less orthogonal
than chance?": the distribution of cos(reference, r_k) over K seeded Gaussian directions of the same
shapes, generated tensor by tensor and never stored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from .tensors import TensorStore, gaussian_tensor, get_flat, open_store, prefetched

GROUPINGS = ("model", "tensor", "layer", "module")
_MODULE_PATTERNS = (
    ("qkv", r"qkv_proj|c_attn|query_key_value|Wqkv"),  # fused attention projections (Phi-3, GPT-2, ...)
    ("q", r"q_proj|\.query\b|\.wq\b"),
    ("k", r"k_proj|\.key\b|\.wk\b"),
    ("v", r"v_proj|\.value\b|\.wv\b"),
    ("o", r"o_proj|out_proj|\.wo\b|attn\.c_proj"),
    ("mlp", r"mlp|gate_proj|up_proj|gate_up_proj|down_proj|feed_forward|\.fc\d|c_fc|experts"),
    ("embeddings", r"embed|wte|wpe"),
    ("head", r"lm_head|output\.weight$"),
    ("norm", r"norm|ln_"),
)


def module_type(name: str) -> str:
    """qkv (fused), q, k, v, o, mlp (gate_up_proj and c_fc included), embeddings, head, norm or other."""
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


def _names(a) -> list[str]:
    return list(a.names() if hasattr(a, "names") else a.keys())


def _shape(x, n: str) -> tuple[int, ...]:
    return tuple(x.shape(n))


def _split(a, b) -> tuple[list[str], list[str], list[str]]:
    """(names in both, only in a, only in b); a shared name must have one shape in both."""
    na, nb = _names(a), _names(b)
    sb = set(nb)
    shared = [n for n in na if n in sb]
    if not shared:
        raise ValueError(
            f"{_origin(a)} and {_origin(b)} share no tensor name (e.g. {na[:1]} vs {nb[:1]}): "
            "directions of different models cannot be compared"
        )
    for n in shared:
        if _shape(a, n) != _shape(b, n):
            raise ValueError(
                f"tensor {n!r} is {list(_shape(a, n))} in {_origin(a)} but {list(_shape(b, n))} in {_origin(b)}"
            )
    sa = set(na)
    return shared, [n for n in na if n not in sb], [n for n in nb if n not in sa]


def _origin(x) -> str:
    return getattr(getattr(x, "store", x), "origin", "<direction>")


def _as(x):
    """Directions and stores are used as they are; paths, state dicts and models become stores."""
    return x if hasattr(x, "get") and (hasattr(x, "names") or isinstance(x, TensorStore)) else open_store(x)


_ROW = 1024


def dot64(x: torch.Tensor, y: torch.Tensor) -> float:
    """⟨x, y⟩: fp32 BLAS dots over rows of 1024 values, summed in float64.

    As accurate as casting to float64 (relative error ~1e-7 against ~1e-5 for one long fp32 dot) at a
    tenth of its cost, with no float64 copy of either tensor.
    """
    x = x.reshape(-1).float()
    y = y.reshape(-1).to(device=x.device, dtype=torch.float32)
    n = x.numel() - x.numel() % _ROW
    total = 0.0
    if n:
        rows = torch.bmm(x[:n].view(-1, 1, _ROW), y[:n].view(-1, _ROW, 1))
        total += float(rows.double().sum())
    if n < x.numel():
        total += float(torch.dot(x[n:].double(), y[n:].double()))
    return total


CHUNK = 1 << 22  # values per streamed chunk: 16 MB of fp32, whatever the size of the tensor


def _chunks(stores: list, names: list[str], chunk: int = CHUNK):
    """(name, [flat chunk of each store]) for every name, read one chunk ahead by a reader thread."""

    def produce():
        for n in names:
            k = 1
            for s in stores[0].shape(n):
                k *= s
            for start in range(0, max(k, 1), chunk):
                yield n, [get_flat(s, n, start, min(k, start + chunk)) for s in stores]

    return prefetched(produce())


def _gram(a, b, names: list[str] | None = None):
    """Per name: (⟨a,b⟩, ⟨a,a⟩, ⟨b,b⟩, numel, in a, in b), streamed in chunks over the union of names: a tensor
    only one side has counts as zero on the other (a LoRA direction covers only the adapted modules)."""
    if names is not None:
        shared, only_a, only_b = list(names), [], []
    else:
        shared, only_a, only_b = _split(a, b)
    acc: dict[str, list] = {}
    for n, (x, y) in _chunks([a, b], shared):
        g = acc.setdefault(n, [0.0, 0.0, 0.0, 0, True, True])
        g[0] += dot64(x, y)
        g[1] += _finite_sq(x, a, n)
        g[2] += _finite_sq(y, b, n)
        g[3] += x.numel()
    for store, names_only, slot, other in ((a, only_a, 1, 5), (b, only_b, 2, 4)):
        for n, (x,) in _chunks([store], names_only):
            g = acc.setdefault(n, [0.0, 0.0, 0.0, 0, True, True])
            g[slot] += _finite_sq(x, store, n)
            g[3] += x.numel()
            g[other] = False
    return acc


def _finite_sq(x: torch.Tensor, store, name: str) -> float:
    """‖x‖², or an error naming the tensor when it holds NaN or Inf (a cosine of it would read as 0)."""
    v = dot64(x, x)
    if not math.isfinite(v):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{_label(store)}: tensor {name!r} contains {bad}")
    return v


def _label(s) -> str:
    if hasattr(s, "store") and hasattr(s, "name"):
        return f"direction {s.name!r} ({getattr(s.store, 'origin', '?')})"
    return str(getattr(s, "origin", "a direction"))


def _check_nonzero(aa: float, bb: float, a, b) -> None:
    for sq, s in ((aa, a), (bb, b)):
        if sq == 0:
            raise ValueError(
                f"{_label(s)} is zero on every tensor: its cosine with anything is undefined "
                "(were its two checkpoints the same?)"
            )


def dot(a, b, names: list[str] | None = None) -> float:
    """⟨a, b⟩ summed tensor by tensor over ``a``'s names (or ``names``), in float64."""
    a, b = _as(a), _as(b)
    return sum(dot64(x, y) for _, (x, y) in _chunks([a, b], names or _split(a, b)[0]))


def norm(a, names: list[str] | None = None) -> float:
    a = _as(a)
    return float(np.sqrt(sum(dot64(x, x) for _, (x,) in _chunks([a], names or _names(a)))))


def cosine(a, b, names: list[str] | None = None) -> float:
    """Whole-model cosine similarity over the union of tensor names (a tensor one side lacks counts as zero
    there). A direction that is zero everywhere, or holds NaN/Inf, is an error (never a cosine of 0)."""
    a, b = _as(a), _as(b)
    acc = _gram(a, b, names)
    ab, aa, bb = (sum(g[i] for g in acc.values()) for i in range(3))
    _check_nonzero(aa, bb, a, b)
    return ab / np.sqrt(aa * bb)


@dataclass
class CosineRow:
    """One group of a cosine table: cos(a, b) over the group's tensors, both norms, and how much of each side's
    squared norm lies in tensors the other side also has (1.0: the pair covers the same tensors)."""

    group: str
    cos: float
    norm_a: float
    norm_b: float
    numel: int
    shared_a: float = 1.0
    shared_b: float = 1.0


def cosine_table(a, b, by: str = "module") -> list[CosineRow]:
    """cos(a, b) per group ("model", "tensor", "layer" or "module" type), one pass over the union of tensors."""
    if by not in GROUPINGS:
        raise ValueError(f"Unknown grouping {by!r}. Available: {', '.join(GROUPINGS)}")
    a, b = _as(a), _as(b)
    acc: dict[str, list[float]] = {}
    gram = _gram(a, b)
    _check_nonzero(sum(g[1] for g in gram.values()), sum(g[2] for g in gram.values()), a, b)
    for n, (ab, aa, bb, k, in_a, in_b) in gram.items():
        g = acc.setdefault(group_of(n, by), [0.0, 0.0, 0.0, 0, 0.0, 0.0])
        for i, v in enumerate((ab, aa, bb, k)):
            g[i] += v
        g[4] += aa if in_b else 0.0  # a's energy in tensors b has
        g[5] += bb if in_a else 0.0
    rows = []
    for g, (ab, aa, bb, k, sa, sb) in acc.items():
        c = ab / np.sqrt(aa * bb) if aa > 0 and bb > 0 else 0.0
        rows.append(
            CosineRow(
                g,
                float(c),
                float(np.sqrt(aa)),
                float(np.sqrt(bb)),
                int(k),
                sa / aa if aa > 0 else 1.0,
                sb / bb if bb > 0 else 1.0,
            )
        )
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
        return {
            "k": len(self.cosines),
            "mean": self.mean,
            "std": self.std,
            "abs_mean": self.abs_mean,
            "q025": self.quantile(0.025),
            "q975": self.quantile(0.975),
        }


def random_null(reference, k: int = 20, seed: int = 0) -> NullDistribution:
    """cos(reference, r_i) for i < k, r_i the seeded Gaussian direction :func:`landscape.directions.random_like`
    would give with seed ``seed + i`` (generated tensor by tensor, never stored)."""
    ref = _as(reference)
    names = _names(ref)
    seeds = [seed + i for i in range(k)]
    ab = np.zeros(k)
    bb = np.zeros(k)
    aa = 0.0
    for n in names:
        x = ref.get(n).float().cpu()
        aa += dot64(x, x)
        for i, s in enumerate(seeds):
            r = gaussian_tensor(n, tuple(x.shape), s)
            ab[i] += dot64(x, r)
            bb[i] += dot64(r, r)
    cos = ab / np.sqrt(aa * bb) if aa > 0 else np.zeros(k)
    return NullDistribution(cos, seeds)


# ------------------------------------------------------------------------------------- subspaces (AsFT's V)


def random_basis(name: str, d_out: int, k: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """A seeded random orthonormal (d_out, k) basis for module ``name`` (same seed and name: same basis)."""
    import hashlib

    key = int.from_bytes(hashlib.sha256(f"random-control:{seed}:{name}".encode()).digest()[:8], "little") >> 1
    g = torch.Generator().manual_seed(key)
    q, _ = torch.linalg.qr(torch.randn(d_out, k, generator=g, dtype=torch.float64))
    return q.to(dtype).contiguous()


def top_left_singular(V: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k left singular vectors of a (d_out, d_in) update, by an exact SVD in V's dtype."""
    return torch.linalg.svd(V, full_matrices=False).U[:, :k].contiguous()


def subspace_share(U: torch.Tensor, H: torch.Tensor, name: str, draws: int = 20) -> dict | None:
    """The share of update H's energy inside span(U) (‖UᵀH‖² / ‖H‖²), beside the same share for ``draws`` seeded
    random subspaces of the same rank (the null; its mean is about k / d_out). None when H is zero."""
    H = H.double()
    total = float(H.square().sum())
    if total == 0:
        return None
    k = U.shape[1]
    null = [
        float((random_basis(name, H.shape[0], k, seed=1000 + i).T @ H).square().sum()) / total for i in range(draws)
    ]
    return {
        "share": float((U.double().T @ H).square().sum()) / total,
        "null_mean": float(np.mean(null)),
        "null_q95": float(np.quantile(null, 0.95)),
    }


def summarise_shares(per_module: dict[str, dict]) -> dict:
    """Mean share, mean null and how many modules lie above the null's 95th percentile."""
    rows = list(per_module.values())
    return {
        "modules": len(rows),
        "mean_share": float(np.mean([r["share"] for r in rows])),
        "mean_null": float(np.mean([r["null_mean"] for r in rows])),
        "above_null_q95": int(sum(r["share"] > r["null_q95"] for r in rows)),
    }
