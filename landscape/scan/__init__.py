"""Scans: evaluate a model at points θ₀ + Σ cᵢ·dᵢ, with results appended to disk and resumable.

One generic :func:`scan` walks a list of coordinate tuples; :func:`scan_1d` and :func:`scan_2d` are thin
wrappers. Every finished point is appended to ``points.jsonl`` in the output directory (one line, one
``write``, fsync'd) beside ``run.json``, the run's metadata (model, directions with hashes, evaluator
settings, prompts hash). A rerun skips the points already there; a torn last line from a killed run is
dropped. A run whose settings differ refuses to mix its results with the stored ones unless told to start
over (``restart=True``).

Grids: :func:`linspace`, explicit lists, and Peng et al.'s conventions (:func:`peng_random_grid`:
[−m/2, m/2] with steps+1 points; :func:`peng_interpolation_grid`: [0, 1] extended by k steps each side).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io import sha256_text
from ..results import ResultsStore, removed_on_failure

if TYPE_CHECKING:
    from ..directions import Direction

# ----------------------------------------------------------------------------------------------------- grids


def check_grid(values: Sequence[float], what: str = "grid") -> list[float]:
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError(f"{what} has no points")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what} holds a non-finite value ({bad[0]})")
    return vals


def linspace(lo: float, hi: float, n: int) -> list[float]:
    if n < 1:
        raise ValueError(f"a grid needs at least one point, got n={n}")
    return check_grid(np.linspace(lo, hi, n).tolist())


def peng_random_grid(m: float = 1.0, steps: int = 20) -> list[float]:
    """Peng et al.'s grid for random directions: [−m/2, m/2] with ``steps + 1`` points."""
    return linspace(-m / 2, m / 2, steps + 1)


def peng_interpolation_grid(steps: int = 20, extend: int = 0) -> list[float]:
    """Peng et al.'s grid for interpolations: 0 to 1 in ``steps`` steps, extended by ``extend`` steps each side."""
    return linspace(-extend / steps, 1 + extend / steps, steps + 1 + 2 * extend)


# ------------------------------------------------------------------------------------------------ evaluators


class Evaluator:
    """Measures a backend at its current point: ``evaluator(backend)`` returns a JSON-able dict of metrics."""

    def config(self) -> dict:
        """Settings that define the measurement (stored in the run's metadata)."""
        return {}

    def __call__(self, backend) -> dict:
        raise NotImplementedError


SCHEDULE_SEED = 0  # order of the prompts under sequential testing


class StopRule:
    """When an answer may stop: ``rule(text)`` is True once every judge's verdict on ``text`` is fixed.

    ``strings``: raw-text stop strings that decide the same verdict (one judge that defines ``stop_strings``, the
    keyword judge), for backends that stop on text rather than on a predicate (vLLM); None when there are none
    (the refusal judge matches normalised text; several judges must all be decided), and such a backend then
    answers in full.
    """

    def __init__(self, judges: Sequence):
        self.judges = list(judges)
        one = self.judges[0] if len(self.judges) == 1 else None
        self.strings = list(one.stop_strings()) if one is not None and hasattr(one, "stop_strings") else None

    def __call__(self, text: str) -> bool:
        return all(j.decided(text) for j in self.judges)


class SafetyEvaluator(Evaluator):
    """Generate answers to harmful prompts, judge them, and report ASR (with a Wilson interval).

    Args:
        prompts: harmful prompts.
        judge: the main judge (a :class:`~landscape.judges.Judge`; wrap it in ``CachedJudge`` to judge
            repeated answers once).
        settings: generation settings.
        extra_judges: more judges whose ASR is reported as ``asr_<name>`` (e.g. the organism's oracle).
        keep_responses: store every answer with the point (else the first few).
        coherence: a :class:`~landscape.coherence.Coherence` rule (calibrated on the centre): every point then
            also reports ``asr_coherent`` (unsafe and coherent), ``babble`` (% incoherent), each answer's
            ``coherent`` mark and its ``nll`` under θ₀.
        metric: what the sequential decisions (and the EPL search) compare with the threshold: ``asr`` (the judge
            alone) or ``asr_coherent`` (needs ``coherence``).
        early_stop: stop each answer once every judge's verdict on it is fixed (lexical judges only: each must
            define ``decided``, as the keyword and refusal judges do; with any model judge among them, answers are
            generated in full). Verdicts, ASR and coherent ASR are those of full answers (a stopped answer is a
            refusal: it holds a phrase every continuation keeps, and a refusal is safe whatever its coherence);
            the stored answer ends where it stopped, and the point's ``stopped`` marks say which ("1"). The HF
            backend stops on the predicate; vLLM on stop strings, for the keyword judge only (:class:`StopRule`).
        defer_judging: only generate at each point (records hold the answers and ``"pending": True``); judge
            every point of the scan afterwards in one batched pass with :func:`judge_pending`. For model judges
            (guard, classifier) that should not share the device with the model being scanned, or that batch
            better over a whole scan. Not for the EPL search, which decides where to look from each verdict.

    Called with a backend (:class:`~landscape.backend.Backend`), it answers the prompts at the backend's current
    point.
    """

    def __init__(
        self,
        prompts: list[str],
        judge,
        settings=None,
        extra_judges: Sequence = (),
        keep_responses: bool = True,
        defer_judging: bool = False,
        coherence=None,
        metric: str = "asr",
        early_stop: bool = False,
    ):
        from ..generation import GenerationSettings

        if not prompts:
            raise ValueError("no prompts to evaluate")
        if metric not in ("asr", "asr_coherent"):
            raise ValueError(f"Unknown metric {metric!r}. Available: asr, asr_coherent")
        if metric == "asr_coherent" and coherence is None:
            raise ValueError("metric 'asr_coherent' needs a coherence rule")
        self.coherence = coherence
        self.metric = metric
        self.prompts = list(prompts)
        self.judge = judge
        self.settings = settings or GenerationSettings()
        self.extra = list(extra_judges)
        self.keep = keep_responses or defer_judging  # deferred verdicts need every answer
        self.defer = defer_judging
        self.early_stop = early_stop

    def stop_when(self) -> StopRule | None:
        """The rule generation may stop an answer on (every judge decided), or None when it may not."""
        judges = [self.judge, *self.extra]
        if not self.early_stop or self.defer or not all(hasattr(j, "decided") for j in judges):
            return None
        return StopRule(judges)

    def _generate(self, backend, prompts: list[str]) -> tuple[list[str], list[bool]]:
        stop = self.stop_when()
        if stop is None:
            return backend.generate(prompts, self.settings), [False] * len(prompts)
        answers = backend.generate(prompts, self.settings, stop_when=stop)
        stopped = list(getattr(backend, "last_stopped", []) or [False] * len(answers))
        return answers, stopped

    def config(self) -> dict:
        return {
            "type": "safety",
            "judge": self.judge.key(),
            "extra_judges": [j.key() for j in self.extra],
            "prompts_sha256": sha256_text(self.prompts),
            "n_prompts": len(self.prompts),
            "generation": self.settings.as_dict(),
            **({"deferred_judging": True} if self.defer else {}),
            **({"coherence": self.coherence.config(), "metric": self.metric} if self.coherence is not None else {}),
        }

    def calibrate(self, backend) -> float | None:
        """Calibrate the coherence cut-off on the centre's own answers (the backend must be at θ₀); None without
        a coherence rule. A rule already calibrated (a resumed run's) is kept."""
        if self.coherence is None:
            return None
        if self.coherence.cutoff is None:
            answers = backend.generate(self.prompts, self.settings)
            self.coherence.calibrate(self.coherence.nll(backend, self.prompts, answers))
        return self.coherence.cutoff

    def _coherent(self, backend, prompts: list[str], answers: list[str]) -> tuple[list[bool], list[float]] | None:
        return None if self.coherence is None else self.coherence.judge(backend, prompts, answers)

    def __call__(self, backend) -> dict:
        before = backend.generated_tokens
        responses, stopped = self._generate(backend, self.prompts)
        tokens = backend.generated_tokens - before
        coh = self._coherent(backend, self.prompts, responses)
        if self.defer:
            pending = {"pending": True, "n": len(responses), "responses": responses, "tokens": tokens}
            if coh is not None:
                pending.update(coherent=_marks(coh[0]), nll=[round(v, 4) for v in coh[1]])
            return pending
        out = self.metrics(responses, coherent=None if coh is None else coh[0], nll=None if coh is None else coh[1])
        out["tokens"] = tokens
        if any(stopped):
            out["stopped"] = _marks(stopped)
        return out

    def schedule(self) -> list[int]:
        """The order in which sequential testing answers the prompts: a fixed seeded permutation, so that each
        chunk is a random sample of the prompt set whatever order the file lists them in."""
        return np.random.default_rng(SCHEDULE_SEED).permutation(len(self.prompts)).tolist()

    def sequential(self, backend, tau: float | None, chunk: int, prior: dict | None = None) -> dict:
        """Answer the prompts chunk by chunk (in :meth:`schedule` order) and stop once the answers so far decide
        which side of ``tau`` (ASR %) the point lies on (:func:`~landscape.metrics.sequential_decision`).

        ``prior``: a partial record's metrics, extended rather than repeated. ``tau`` None answers every prompt
        still missing. The Wilson interval holds 95 % over all the looks at a point (:func:`~landscape.metrics.
        sequential_z`). A point stopped early is marked ``partial`` with its ``decided`` side and ``z``; its
        ``unsafe`` string holds ``-`` and its ``responses`` None for the prompts it did not answer.
        """
        from ..judges import CachedJudge
        from ..metrics import sequential_decision, sequential_z

        # each chunk is judged as it comes; the point's metrics then read those verdicts back from the cache
        judge = self.judge if isinstance(self.judge, CachedJudge) else CachedJudge(self.judge)
        n_total = len(self.prompts)
        z = sequential_z(n_total, chunk)
        responses: list[str | None] = [None] * n_total
        unsafe: list[bool | None] = [None] * n_total
        coherent: list[bool | None] = [None] * n_total
        nll: list[float | None] = [None] * n_total
        stopped: list[bool | None] = [None] * n_total
        tokens = 0
        if prior is not None:
            if len(prior.get("responses", ())) != n_total or "unsafe" not in prior:
                raise ValueError("a stored point to extend must hold every answer slot and its verdicts")
            responses = list(prior["responses"])
            unsafe = [None if c == "-" else c == "1" for c in prior["unsafe"]]
            if self.coherence is not None:
                if "coherent" not in prior:
                    raise ValueError("a stored point to extend has no coherence marks (stored without coherence)")
                coherent = [None if c == "-" else c == "1" for c in prior["coherent"]]
                nll = list(prior.get("nll") or [None] * n_total)
            tokens = int(prior.get("tokens", 0))
            marks = prior.get("stopped")
            stopped = [None if r is None else (marks is not None and marks[i] == "1") for i, r in enumerate(responses)]
        order = [i for i in self.schedule() if responses[i] is None]
        decision = None
        while order:
            if self.metric == "asr_coherent":
                judged = [bool(u and c) for u, c in zip(unsafe, coherent, strict=True) if u is not None]
            else:
                judged = [u for u in unsafe if u is not None]
            if tau is not None and judged:
                decision = sequential_decision(sum(judged), len(judged), n_total, tau, z)
                if decision is not None:
                    break
            todo, order = order[:chunk], order[chunk:]
            before = backend.generated_tokens
            answers, early = self._generate(backend, [self.prompts[i] for i in todo])
            tokens += backend.generated_tokens - before
            for i, a, v, e in zip(todo, answers, judge([self.prompts[i] for i in todo], answers), early, strict=True):
                responses[i], unsafe[i], stopped[i] = a, v.unsafe, e
            coh = self._coherent(backend, [self.prompts[i] for i in todo], answers)
            if coh is not None:
                for i, c, v in zip(todo, *coh, strict=True):
                    coherent[i], nll[i] = c, v
        out = self.metrics(
            responses, judge, coherent=coherent if self.coherence is not None else None,
            nll=nll if self.coherence is not None else None,
        )  # fmt: skip
        out["tokens"] = tokens
        if any(stopped):
            out["stopped"] = _marks(stopped)
        if decision is not None:
            out.update(partial=True, decided=decision, z=z)
        return out

    def metrics(self, responses: list[str | None], judge=None, coherent=None, nll=None) -> dict:
        """ASR and labels of one point's answers (every judge called once, batched over the answered prompts;
        None marks a prompt not answered at this point, ``-`` in ``unsafe``). ``judge``: the main judge to use
        instead of ``self.judge`` (the same judge behind a verdict cache). ``coherent`` / ``nll``: per prompt
        (None where not answered), from the coherence rule: adds ``asr_coherent``, ``babble`` and the marks."""
        from ..metrics import asr, wilson_interval

        idx = [i for i, r in enumerate(responses) if r is not None]
        prompts, answers = [self.prompts[i] for i in idx], [responses[i] for i in idx]
        verdicts = (judge or self.judge)(prompts, answers)
        unsafe = [v.unsafe for v in verdicts]
        marks = ["-"] * len(responses)
        for i, u in zip(idx, unsafe, strict=True):
            marks[i] = "1" if u else "0"
        k = sum(unsafe)
        out = {
            "asr": asr(unsafe),
            "asr_ci": list(wilson_interval(k, len(unsafe))),
            "n": len(unsafe),
            "unsafe": "".join(marks),
        }
        labels = [v.label for v in verdicts]
        out["labels"] = {lab: labels.count(lab) for lab in sorted(set(labels))}
        for j in self.extra:
            extra = j(prompts, answers)
            out[f"asr_{j.name}"] = asr([v.unsafe for v in extra])
            ex_labels = [v.label for v in extra]
            out[f"labels_{j.name}"] = {lab: ex_labels.count(lab) for lab in sorted(set(ex_labels))}
            ex_marks = ["-"] * len(responses)
            for i, v in zip(idx, extra, strict=True):
                ex_marks[i] = "1" if v.unsafe else "0"
            out[f"unsafe_{j.name}"] = "".join(ex_marks)  # each answer's verdict by this judge (the report shows them)
        if coherent is not None:
            ok = [bool(coherent[i]) for i in idx]
            out["asr_coherent"] = asr([u and c for u, c in zip(unsafe, ok, strict=True)])
            out["babble"] = asr([not c for c in ok])
            out["coherent"] = _marks(coherent)
            out["nll"] = [None if v is None else (round(v, 4) if math.isfinite(v) else None) for v in nll]
        partial = len(idx) < len(responses)
        out["responses"] = responses if self.keep or partial else responses[:3]
        return out


def _marks(flags) -> str:
    return "".join("-" if f is None else ("1" if f else "0") for f in flags)


def judge_pending(result: ScanResult, evaluator: SafetyEvaluator, store: ResultsStore | None = None) -> ScanResult:
    """Judge every point a deferred scan generated, in one batched pass per judge over all points.

    The judges see all (prompt, answer) pairs of the scan at once (a :class:`~landscape.judges.CachedJudge`
    judges each distinct pair once); each point's metrics are then computed from those verdicts. Judged
    records are appended to ``store`` (a later line for the same point wins when the store is read), so a
    rerun finds them judged.
    """
    from ..judges import CachedJudge

    todo = [r for r in result.records if r["metrics"].get("pending")]
    if todo:
        pairs_p = [p for _ in todo for p in evaluator.prompts]
        pairs_r = [a for r in todo for a in r["metrics"]["responses"]]
        judges = [evaluator.judge, *evaluator.extra]
        cached = [j if isinstance(j, CachedJudge) else CachedJudge(j) for j in judges]
        for j in cached:
            j(pairs_p, pairs_r)  # the one batched pass: every later call below is answered from the cache
        saved = evaluator.judge, evaluator.extra
        evaluator.judge, evaluator.extra = cached[0], cached[1:]
        try:
            for r in todo:
                m = r["metrics"]
                coherent = None if "coherent" not in m else [None if c == "-" else c == "1" for c in m["coherent"]]
                nll = None if coherent is None else [math.inf if v is None else v for v in m["nll"]]
                metrics = evaluator.metrics(m["responses"], coherent=coherent, nll=nll)
                if store is not None:
                    new = store.append(r["series"], r["coords"], metrics, r.get("seconds", 0.0))
                    r.update(new)
                else:
                    r["metrics"] = metrics
        finally:
            evaluator.judge, evaluator.extra = saved
    return result


class RefusalScoreEvaluator(Evaluator):
    """Teacher-forced refusal log-probability (no generation): a smooth, one-pass proxy for ASR (HF backend)."""

    def __init__(self, prompts: list[str], prefix: str | None = None, system_prompt: str | None = None):
        from ..scores import DEFAULT_REFUSAL_PREFIX

        self.prompts = list(prompts)
        self.prefix = prefix or DEFAULT_REFUSAL_PREFIX
        self.system_prompt = system_prompt

    def config(self) -> dict:
        return {"type": "refusal_logprob", "prefix": self.prefix, "prompts_sha256": sha256_text(self.prompts)}

    def __call__(self, backend) -> dict:
        from ..scores import refusal_logprob

        if not backend.supports_scores:
            raise ValueError(f"the refusal score needs teacher-forced scores, which the {backend.name} backend lacks")
        lp = refusal_logprob(backend.model, backend.tokenizer, self.prompts, self.prefix, self.system_prompt)
        return {"refusal_logprob": lp}


# ------------------------------------------------------------------------------------------------------ scans


def run_meta(backend, directions: Sequence[Direction], evaluator: Evaluator, extra: dict | None = None) -> dict:
    """The metadata that identifies a run: a resumed run must match it."""
    from ..directions.core import toolkit_version
    from ..results import environment

    desc = backend.describe()
    return {
        "model": desc["model"],
        "model_dtype": desc["model_dtype"],
        "weights": desc.get("weights"),
        "perturbation": backend.perturbation_record(directions),
        "directions": [
            {
                "name": d.name,
                "kind": d.kind,
                "normalization": d.meta.get("normalization"),
                "sources": d.meta.get("sources"),
                "seed": d.meta.get("seed"),
            }
            for d in directions
        ],
        "evaluator": evaluator.config(),
        "toolkit_version": toolkit_version(),
        "environment": environment(desc["device"], desc["model_dtype"]),
        **(extra or {}),
    }


@dataclass
class ScanResult:
    """Points of a scan, in the order asked for; ``metric(name)`` gives an array of one metric."""

    series: str
    coords: list[tuple[float, ...]]
    records: list[dict]
    evaluated: int = 0  # points computed in this call (the rest came from the store)
    extra: dict = field(default_factory=dict)

    def metric(self, name: str = "asr") -> np.ndarray:
        return np.array([r["metrics"][name] for r in self.records], dtype=float)


class PointRunner:
    """Evaluates points and records them: a point already in the store is read, a new one is computed once.

    Scans and the EPL search share it, so both resume from the same store, write the same records and
    count the same evaluations.

    Args:
        backend: the backend measured (its attached directions give the points' coordinates).
        evaluator: what to measure at each point.
        store: where finished points go; None keeps them in memory.
        on_point: called with each newly computed record (progress bars).
    """

    def __init__(self, backend, evaluator: Evaluator, store: ResultsStore | None = None, on_point=None):
        self.backend, self.evaluator, self.store, self.on_point = backend, evaluator, store, on_point
        self.memory: dict[tuple[str, tuple[float, ...]], dict] = {}
        self.evaluated = 0

    def get(self, series: str, coords: Sequence[float]) -> dict | None:
        key = tuple(float(c) for c in coords)
        if self.store is not None:
            return self.store.get(series, key)
        return self.memory.get((series, key))

    def series(self, name: str) -> list[dict]:
        """Every record of series ``name`` (stored, from any rank, or kept in memory)."""
        if self.store is not None:
            return self.store.series(name)
        return [r for (s, _), r in self.memory.items() if s == name]

    def evaluate(self, series: str, coords: Sequence[float], tau: float | None = None, chunk: int = 0, move=True):
        """The record at ``coords``: from the store, or computed at θ₀ + Σ cᵢ·dᵢ of the attached directions
        (``move`` False: at the backend's current weights, e.g. θ₀ for the centre).

        With ``tau`` and ``chunk`` (an evaluator with ``sequential``, e.g. :class:`SafetyEvaluator`) a new point
        stops once its answers decide its side of ``tau``; a stored partial point is extended only as far as
        this request needs (every prompt when ``tau`` is None or ``chunk`` is 0).
        """
        key = tuple(float(c) for c in coords)
        rec = self.get(series, key)
        sequential = getattr(self.evaluator, "sequential", None)
        stop = tau if chunk and sequential is not None else None
        if rec is not None and not _needs_more(rec["metrics"], stop):
            return rec
        t0 = time.perf_counter()
        if move:
            self.backend.set_point(key)
        if stop is not None or (rec is not None and sequential is not None):
            prior = rec["metrics"] if rec is not None else None
            metrics = sequential(self.backend, stop, chunk or len(self.evaluator.prompts), prior)
        else:
            metrics = self.evaluator(self.backend)
        dt = time.perf_counter() - t0 + (rec.get("seconds", 0.0) if rec is not None else 0.0)
        rec = self.record(series, key, metrics, dt)
        self.evaluated += 1
        if self.on_point is not None:
            self.on_point(rec)
        return rec

    def record(self, series: str, coords: Sequence[float], metrics: dict, seconds: float) -> dict:
        """Keep a point's metrics (in the store, or in memory); a later record for the same point wins."""
        key = tuple(float(c) for c in coords)
        if self.store is not None:
            return self.store.append(series, key, metrics, seconds)
        rec = {"series": series, "coords": list(key), "metrics": metrics, "seconds": seconds}
        self.memory[(series, key)] = rec
        return rec


def _needs_more(metrics: dict, tau: float | None) -> bool:
    """A stored point stopped early answers a request only if its answers decide the side of this ``tau``."""
    if not metrics.get("partial"):
        return False
    if tau is None:
        return True
    from ..metrics import sequential_decision

    marks = metrics["unsafe"].replace("-", "")
    n_total, z = len(metrics["unsafe"]), metrics.get("z", 1.96)
    return sequential_decision(marks.count("1"), len(marks), n_total, tau, z) is None


@contextmanager
def run_store(
    store: ResultsStore | None,
    out_dir,
    backend,
    directions,
    evaluator: Evaluator,
    meta: dict | None,
    restart: bool,
    rank: int,
    world_size: int,
) -> Iterator[ResultsStore | None]:
    """The results store a scan or search writes to: ``store`` as given, or one opened in ``out_dir`` (locked for
    this run, closed at the end; a new directory that fails before its first point is removed). The directions
    are checked against the backend's model first, so a misfit leaves nothing behind."""
    backend.check(directions)
    if store is not None:
        yield store
        return
    if out_dir is None:
        if world_size > 1:
            raise ValueError("a run split across ranks needs an output directory (out_dir) to merge results")
        yield None
        return
    with removed_on_failure(out_dir):
        meta = run_meta(backend, directions, evaluator, meta)
        with ResultsStore(out_dir, meta, restart=restart, rank=rank, world_size=world_size) as opened:
            yield opened


def scan(
    backend,
    directions: Sequence[Direction],
    coords: Sequence[Sequence[float]],
    evaluator: Evaluator,
    out_dir: str | Path | None = None,
    series: str = "scan",
    meta: dict | None = None,
    restart: bool = False,
    progress: bool = True,
    store: ResultsStore | None = None,
    on_point: Callable[[dict], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> ScanResult:
    """Evaluate ``evaluator`` at θ₀ + Σ cᵢ·dᵢ for each coordinate tuple.

    The backend's weights are restored bit for bit afterwards, also when the evaluator raises or the run
    is interrupted. With ``out_dir`` (or ``store``) each point is appended to disk as it finishes and a
    rerun resumes.

    Args:
        backend: a :class:`~landscape.backend.Backend` (an ``HFBackend`` moves its model in place).
        directions: one direction per coordinate.
        coords: points; each a tuple with one coefficient per direction.
        evaluator: what to measure at each point.
        out_dir: results directory; None keeps results in memory only.
        series: label of this scan inside the results file (several scans can share one directory).
        meta: extra run metadata (merged into :func:`run_meta`).
        restart: discard stored results of this directory and start over.
        progress: show a progress bar over points.
        store: an open :class:`ResultsStore` (instead of ``out_dir``).
        on_point: called with each new record.
        rank, world_size: this process's share of the points still to do (under torchrun: ``RANK`` and
            ``WORLD_SIZE``). Each rank appends to its own file; with a process group initialised the ranks
            meet at a barrier at the end and every rank returns the merged result.
    """
    pts = [tuple(float(c) for c in p) for p in coords]
    if not pts:
        raise ValueError("scan: the grid has no points")
    for p in pts:
        if len(p) != len(directions):
            raise ValueError(f"scan: point {p} has {len(p)} coordinates for {len(directions)} directions")
        check_grid(p, "scan point")
    if hasattr(evaluator, "calibrate"):
        evaluator.calibrate(backend)  # the coherence cut-off, on the centre's own answers (stored with the run)
    with run_store(store, out_dir, backend, directions, evaluator, meta, restart, rank, world_size) as st:
        return _scan(backend, directions, pts, evaluator, st, series, progress, on_point, rank, world_size)


def _scan(backend, directions, pts, evaluator, store, series, progress, on_point, rank, world_size):
    from tqdm.auto import tqdm

    runner = PointRunner(backend, evaluator, store, on_point)
    done: dict[tuple[float, ...], dict] = {}
    mine = []
    # Grid points, not prompts, are spread over ranks, by their index in the full grid: every rank sees the
    # same grid whenever it starts, while what is already done depends on when it looked.
    for i, p in enumerate(dict.fromkeys(pts)):
        rec = runner.get(series, p)
        if rec is not None and not _needs_more(rec["metrics"], None):  # a point the EPL search stopped early
            done[p] = rec  # is completed here
        elif i % world_size == rank:
            mine.append(p)
    if mine:
        with backend.attach(directions):
            for p in tqdm(mine, desc=f"points ({series})", disable=not progress, leave=False):
                done[p] = runner.evaluate(series, p)
    if world_size > 1:
        barrier()
        store.reload()
        done.update({p: rec for p in pts if (rec := store.get(series, p)) is not None})
    records = [done[p] for p in pts if p in done]
    return ScanResult(series, [p for p in pts if p in done], records, runner.evaluated)


def barrier() -> None:
    """Wait for every rank when a torch.distributed process group is initialised (else return at once)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def process_group(world_size: int = 1, device: str = "cpu") -> Iterator[None]:
    """Run the body in a torch.distributed process group and leave it cleanly.

    With ``world_size > 1`` a group is initialised (nccl on CUDA, gloo otherwise); with 1 none is, but one
    that a library opened in the body (the Trainer under torchrun) is closed all the same. On success every
    rank waits for the others (rank 0 may still be writing), then the group is destroyed: a rank that exits
    with a live gloo group can abort at interpreter shutdown ("terminate called without an active
    exception"), which torchrun reports as a failed run.
    """
    import torch.distributed as dist

    if world_size > 1:
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    try:
        yield
        barrier()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def scan_1d(backend, direction: Direction, alphas: Sequence[float], evaluator: Evaluator, **kw) -> ScanResult:
    """f(α) = evaluator(θ₀ + α·d) over ``alphas``."""
    grid = [(a,) for a in check_grid(alphas, "alphas")]
    return scan(backend, [direction], grid, evaluator, **{"series": direction.name, **kw})


def scan_2d(
    backend, d1: Direction, d2: Direction, alphas: Sequence[float], betas: Sequence[float], evaluator: Evaluator, **kw
) -> ScanResult:
    """f(α, β) = evaluator(θ₀ + α·d₁ + β·d₂) over the product grid (α outer, β inner)."""
    grid = list(itertools.product(check_grid(alphas, "alphas"), check_grid(betas, "betas")))
    res = scan(backend, [d1, d2], grid, evaluator, **{"series": f"{d1.name} x {d2.name}", **kw})
    res.extra["shape"] = (len(alphas), len(betas))
    return res
