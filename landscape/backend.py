"""The one interface scans, the EPL search, figures and notebooks talk to: a model that owns its weights.

A :class:`Backend` moves its own weights along directions (:meth:`~Backend.attach`, :meth:`~Backend.set_point`,
:meth:`~Backend.restore`), answers prompts (:meth:`~Backend.generate`), scores answers by teacher forcing where it
can (:meth:`~Backend.greedy_kept`) and says what its perturbation will hold (:meth:`~Backend.plan`), so a caller
never asks which kind of model it has (lm-evaluation-harness's ``LM`` is the model). :class:`HFBackend` is a
Hugging Face causal LM moved in place; :class:`~landscape.vllm_backend.VLLMBackend` is vLLM, whose workers reload
their weights. The commands pick one by name (``--backend hf|vllm``) in :func:`landscape.session.open_backend`.

HF generation calls ``model.generate`` (KV cache; greedy or seeded sampling) with one addition, a logits processor
that refuses NaN/Inf logits so that broken weights get an error rather than a verdict. Prompts are rendered with
the tokenizer's chat template (optionally with a system prompt), sorted by length to cut padding, left-padded, and
answered in as few batches as memory allows (the batch halves on an out-of-memory error). A hand-written decode
loop that dropped finished rows was the backend until organism v3; ``benchmarks/bench_time_to_epl.py`` measured it
at 1.15x of ``generate`` (batch 80) and 1.22x (16) there, below the 1.3x that would pay for keeping it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from .generation import GenerationSettings, is_oom, refuse_non_finite
from .memory import MemoryPlan, Placement, choose_placement, describe_direction, free_device_bytes, get_placement
from .text import encode_prompts, left_pad, pad_id_of

BACKENDS = ("hf", "vllm")


class Backend:
    """A model that owns its weights, their perturbation and its generation.

    Subclasses implement :meth:`generate`, :meth:`attach`, :meth:`set_point`, :meth:`restore`, :meth:`plan` and
    :meth:`describe`; :meth:`greedy_kept` where teacher forcing is available (``supports_scores``).

    Attributes:
        name: ``hf`` or ``vllm``.
        tokenizer: the model's tokenizer.
        generated_tokens: new tokens generated so far (EOS included).
        supports_scores: :meth:`greedy_kept` works (the EPL search's refusal proxy needs it).
    """

    name = "backend"
    supports_scores = False
    tokenizer = None
    generated_tokens = 0

    def describe(self) -> dict:
        """What identifies the weights and how they are moved (stored with every run; a resumed run must match)."""
        raise NotImplementedError

    def check(self, directions: Sequence) -> None:
        """Raise before anything is written when a direction does not fit the model (names, shapes, NaN/Inf)."""
        raise NotImplementedError

    def attach(self, directions: Sequence):
        """Context manager: the directions are loaded (as the placement says) for :meth:`set_point`; leaving it puts
        θ₀ back bit for bit and drops them."""
        raise NotImplementedError

    def set_point(self, coeffs: Sequence[float]) -> None:
        """Move the weights to θ₀ + Σ cᵢ·dᵢ along the attached directions."""
        raise NotImplementedError

    def restore(self) -> None:
        """Put θ₀ back (bit for bit)."""
        raise NotImplementedError

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None, stop_when=None) -> list[str]:
        """Answer every prompt. ``stop_when(text) -> bool`` (a lexical judge's ``decided``): an answer may stop as
        soon as it holds (its verdict can no longer change); :attr:`last_stopped` then says which did. A backend
        that cannot stop answers one by one generates them in full (correct, only slower)."""
        raise NotImplementedError

    last_stopped: list[bool] = []  # per answer of the last generate(): stopped early by stop_when

    def plan(self, directions: Sequence) -> MemoryPlan:
        """The bytes attaching ``directions`` (all at once) will hold beyond the loaded model."""
        raise NotImplementedError

    def encode(self, prompts: list[str], settings: GenerationSettings) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, settings.system_prompt, settings.use_chat_template)

    def generate_ids(self, ids: list[list[int]], settings: GenerationSettings | None = None) -> list[list[int]]:
        raise NotImplementedError

    def greedy_kept(self, prompt_ids: list[list[int]], answer_ids: list[list[int]], batch_size: int = 64):
        raise NotImplementedError(f"the {self.name} backend has no teacher-forced scores")


class HFBackend(Backend):
    """A Hugging Face causal LM that stays where it is; its weights are moved in place.

    Args:
        model: the model (weights perturbed in place by :meth:`attach` / :meth:`set_point`).
        tokenizer: its tokenizer.
        placement: where a perturbation keeps the pristine copy and the directions (``auto``: ``device`` when it
            fits the device's free memory, else ``host``; see :mod:`landscape.memory`).
        progress: a progress bar over generation batches.
    """

    name = "hf"
    supports_scores = True

    def __init__(self, model, tokenizer, placement: str | Placement = "auto", progress: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress
        self.placement = placement if placement == "auto" else get_placement(placement)
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = {eos} if eos is not None else set()
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = torch.tensor(sorted(ids), dtype=torch.long)
        self.pad_id = pad_id_of(tokenizer)
        self.generated_tokens = 0
        self._pert = None
        self.last_plan: MemoryPlan | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------------------------------- weights

    def describe(self) -> dict:
        cfg = getattr(self.model, "config", None)
        return {
            "backend": self.name,
            "model": getattr(cfg, "_name_or_path", None) or type(self.model).__name__,
            "model_dtype": str(self.dtype),
            "device": str(self.device),
            "weights": getattr(self.model, "landscape_weights", None),
        }

    def check(self, directions: Sequence) -> None:
        from .perturb import check_compatible

        check_compatible(self.model, directions)

    def resolve_placement(self, directions: Sequence) -> Placement:
        """The placement for ``directions``: the one asked for, or under ``auto`` the first that fits."""
        if self.placement != "auto":
            return self.placement
        plans = {name: self.plan(directions, name) for name in ("device", "device-fp32", "host")}
        free = free_device_bytes(self.device)
        return get_placement(choose_placement(plans, free))

    def plan(self, directions: Sequence, placement: str | Placement | None = None) -> MemoryPlan:
        from .memory import perturbation_plan
        from .perturb import _resolve

        params = {id(p): (n, p) for n, p in self.model.named_parameters()}
        shapes = {n: tuple(p.shape) for n, p in params.values()}
        canon = {id(p): n for n, p in params.values()}
        aliases = {n: canon[id(p)] for n, p in _resolve(self.model, directions).items()}
        chosen = placement or self.placement
        if chosen == "auto":
            chosen = self.resolve_placement(directions)
        return perturbation_plan(
            shapes,
            str(self.dtype),
            [describe_direction(d) for d in directions],
            chosen,
            same_memory=self.device.type == "cpu",
            aliases=aliases,
        )

    @contextmanager
    def attach(self, directions: Sequence) -> Iterator[HFBackend]:
        from .perturb import Perturbation

        if self._pert is not None:
            raise RuntimeError("directions are already attached to this backend (leave that attach() first)")
        with Perturbation(self.model, directions, self.resolve_placement(directions)) as pert:
            self._pert = pert
            self.last_plan = pert.plan()
            try:
                yield self
            finally:
                self._pert = None

    def perturbation_record(self, directions: Sequence) -> dict:
        """What about the perturbation changes numbers (a resumed run must match): the dtype the directions are
        kept in, and where seeded random directions are drawn (another device's generator draws other numbers)."""
        pl = self.resolve_placement(directions)
        dtype = str(self.dtype) if pl.direction_dtype == "model" else str(torch.float32)
        drawn = self.device.type if pl.regenerate_random else "cpu"
        return {"direction_dtype": dtype, "random_drawn_on": drawn}

    def set_point(self, coeffs: Sequence[float]) -> None:
        if self._pert is None:
            raise RuntimeError("set_point needs attached directions: use `with backend.attach(directions):`")
        self._pert.set_(coeffs)

    def restore(self) -> None:
        if self._pert is not None:
            self._pert.restore_()

    @contextmanager
    def at_centre(self):
        """Inside: the weights are θ₀; leaving: back at the point it was at (bit for bit: recomputed from θ₀)."""
        coeffs = tuple(self._pert.coeffs) if self._pert is not None else ()
        moved = any(c != 0.0 for c in coeffs)
        if moved:
            self._pert.restore_()
        try:
            yield self
        finally:
            if moved:
                self._pert.set_(coeffs)

    def answer_logprobs(self, prompts, answers, system_prompt=None, batch_size: int = 32):
        """Per pair, the log-probabilities of the answer's tokens after the prompt at the current weights."""
        from .scores import answer_logprobs

        return answer_logprobs(self.model, self.tokenizer, prompts, answers, system_prompt, batch_size)

    # ---------------------------------------------------------------------------------------- generation

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None, stop_when=None) -> list[str]:
        """Answer every prompt; returns the decoded answers (special tokens removed) in prompt order. With
        ``stop_when``, an answer stops at the first token after which its decoded text satisfies it (a per-row
        stopping criterion: the row is finished, the batch runs on while any row is not)."""
        settings = settings or GenerationSettings()
        out = self.generate_ids(self.encode(prompts, settings), settings, stop_when=stop_when)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def generate_ids(
        self, ids: list[list[int]], settings: GenerationSettings | None = None, stop_when=None
    ) -> list[list[int]]:
        """New token ids for each prompt given as token ids, in order; batches halve on out-of-memory."""
        settings = settings or GenerationSettings()
        stopped = [False] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        results: list[list[int]] = [[] for _ in ids]
        batch = settings.batch_size or len(ids) or 1
        start = 0
        bar = tqdm(total=len(ids), desc="generate", disable=not self.progress, leave=False)
        dev = self.device
        # generate() samples from torch's global generator: seed a fork of it once for all batches (one stream,
        # not the same draws in every batch), and leave the caller's random state alone.
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(settings.seed)
            while start < len(order):
                chunk = order[start : start + batch]
                try:
                    outs, early = self._generate_batch([ids[i] for i in chunk], settings, stop_when)
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not is_oom(err) or batch == 1:
                        raise
                    batch = max(1, batch // 2)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                for i, out, e in zip(chunk, outs, early, strict=True):
                    results[i], stopped[i] = out, e
                start += len(chunk)
                bar.update(len(chunk))
        bar.close()
        self.generated_tokens += sum(map(len, results))
        self.last_stopped = stopped
        return results

    @torch.inference_mode()
    def _generate_batch(
        self, batch_ids: list[list[int]], s: GenerationSettings, stop_when=None
    ) -> tuple[list[list[int]], list[bool]]:
        """``model.generate`` on one left-padded batch; each answer cut after its first EOS, or where
        ``stop_when`` stopped it (then flagged)."""
        from transformers import GenerationConfig

        dev = self.device
        x, mask, _ = left_pad(batch_ids, self.pad_id)
        width = x.shape[1]
        config = GenerationConfig(
            do_sample=s.do_sample,
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.max_new_tokens if s.ignore_eos else None,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids.tolist(),
            cache_implementation="static" if s.static_cache else None,
            **({"temperature": s.temperature, "top_p": s.top_p, "top_k": 0} if s.do_sample else {}),
        )
        # generate() fills every option left unset from the checkpoint's generation_config.json (a Qwen's
        # repetition_penalty 1.05, a Llama's sampling temperature): for the call, the model has none, so an answer
        # depends on GenerationSettings alone, as with the vLLM backend's explicit SamplingParams.
        own, self.model.generation_config = self.model.generation_config, GenerationConfig()
        stop = None if stop_when is None else VerdictStop(self.tokenizer, width, stop_when, len(batch_ids))
        try:
            out = self.model.generate(
                input_ids=x.to(dev),
                attention_mask=mask.to(dev),
                generation_config=config,
                logits_processor=[refuse_non_finite],
                **({"stopping_criteria": [stop]} if stop is not None else {}),
            )
        finally:
            self.model.generation_config = own
        out = out[:, width:].cpu()
        eos = set(self.eos_ids.tolist())
        results, early = [], []
        for r, row in enumerate(out.tolist()):
            ended = None if s.ignore_eos else next((i + 1 for i, t in enumerate(row) if t in eos), None)
            at = stop.stopped_at[r] if stop is not None else None
            # stopped by stop_when unless the answer had ended (EOS) first; a stop that finished the whole batch
            # leaves no padding after it (at == len(row)), and is a stop all the same
            early.append(at is not None and (ended is None or at < ended))
            results.append(row[:at] if early[-1] else row[: ended or len(row)])
        return results, early

    # ------------------------------------------------------------------------------------------- scores

    def greedy_kept(self, prompt_ids: list[list[int]], answer_ids: list[list[int]], batch_size: int = 64):
        from .scores import greedy_kept

        return greedy_kept(self.model, prompt_ids, answer_ids, self.pad_id, batch_size)


class VerdictStop:
    """A per-row stopping criterion for ``model.generate``: row ``r`` stops after the first token at which
    ``stop_when(decoded answer so far)`` holds; :attr:`stopped_at` keeps that answer length (None: never)."""

    def __init__(self, tokenizer, width: int, stop_when, rows: int):
        self.tokenizer, self.width, self.stop_when = tokenizer, width, stop_when
        self.stopped_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.width :]
        todo = [r for r, at in enumerate(self.stopped_at) if at is None]
        if todo:
            texts = self.tokenizer.batch_decode(new[todo].tolist(), skip_special_tokens=True)
            for r, text in zip(todo, texts, strict=True):
                if self.stop_when(text):
                    self.stopped_at[r] = new.shape[1]
        done = [at is not None for at in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate(model, tokenizer, prompts: list[str], settings: GenerationSettings | None = None) -> list[str]:
    """Answer ``prompts`` with a Hugging Face model at its current weights (an :class:`HFBackend` for one call)."""
    return HFBackend(model, tokenizer).generate(prompts, settings)
