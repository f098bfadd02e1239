"""Batched generation of answers to prompts.

The Hugging Face backend calls ``model.generate`` (KV cache; greedy or seeded sampling) with one addition, a
logits processor that refuses NaN/Inf logits so that broken weights get an error rather than a verdict.
Prompts are rendered with the tokenizer's chat template (optionally with a system prompt, e.g. the Llama-2
default that Peng et al. use), sorted by length to cut padding, left-padded, and answered in as few batches as
memory allows (the batch halves on an out-of-memory error).

Why not a hand-written decode loop: one that drops finished rows from the batch and the cache at every step
was the backend until organism v3. ``benchmarks/bench_time_to_epl.py`` measures it against ``generate`` on the
EPL workload (same batch, greedy, identical answers): 1.36x at batch 80 on organism v2, but 1.15x at batch 80
and 1.22x at 16 on v3's wider model, below the 1.3x that would pay for keeping it. The loop now lives in that
benchmark only, as the candidate it measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .text import encode_prompts, left_pad, pad_id_of

LLAMA2_SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)


@dataclass
class GenerationSettings:
    """How answers are generated.

    Attributes:
        max_new_tokens: cap on generated tokens per answer.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (only with ``do_sample``).
        top_p: nucleus sampling mass (only with ``do_sample``).
        seed: seed of the sampling generator.
        batch_size: prompts per batch; None puts them all in one batch (halved on out-of-memory).
        system_prompt: optional system message placed before each prompt.
        use_chat_template: render prompts with the tokenizer's chat template when it has one.
        ignore_eos: keep generating after EOS (benchmarks with a fixed number of tokens).
        static_cache: generate on a static KV cache (which transformers compiles on CUDA) instead of a dynamic
            one: fixed shapes let the decode step be compiled or graphed, which pays when most sequences run to
            ``max_new_tokens`` on a GPU.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int | None = None
    system_prompt: str | None = None
    use_chat_template: bool = True
    ignore_eos: bool = False
    static_cache: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class GenerationBackend(Protocol):
    """Anything that answers a list of prompts; the Hugging Face backend here, vLLM in its own module."""

    def generate(self, prompts: list[str], settings: GenerationSettings) -> list[str]: ...


def refuse_non_finite(input_ids, scores: torch.Tensor) -> torch.Tensor:
    """A logits processor that stops generation on NaN/Inf logits: a broken point gets an error, not a verdict.

    ``generate`` runs it after its own processors, which set banned tokens to −inf (EOS before
    ``min_new_tokens``, top-p): −inf is refused only where a whole row is −inf. One reduction, one sync: a
    row's max is NaN if any entry is, +inf if any is, −inf only if all are."""
    if not bool(torch.isfinite(scores.amax(-1)).all()):
        from .loading import NonFiniteError

        raise NonFiniteError(
            "non-finite logits (NaN/Inf) while generating: the weights at this point are broken (a perturbation "
            "too large for the dtype, or bad weights); no verdict is given for it"
        )
    return scores


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class HFBackend:
    """Generation with a Hugging Face causal LM that stays where it is (weights may be perturbed in place)."""

    def __init__(self, model, tokenizer, progress: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.progress = progress
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = {eos} if eos is not None else set()
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = torch.tensor(sorted(ids), dtype=torch.long)
        self.pad_id = pad_id_of(tokenizer)
        self.generated_tokens = 0  # new tokens generated so far, EOS included (benchmarks, EPL reports)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list[str], settings: GenerationSettings) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, settings.system_prompt, settings.use_chat_template)

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None) -> list[str]:
        """Answer every prompt; returns the decoded answers (special tokens removed) in prompt order."""
        settings = settings or GenerationSettings()
        out = self.generate_ids(self.encode(prompts, settings), settings)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def generate_ids(self, ids: list[list[int]], settings: GenerationSettings | None = None) -> list[list[int]]:
        """New token ids for each prompt given as token ids, in order; batches halve on out-of-memory."""
        settings = settings or GenerationSettings()
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
                    outs = self._generate_batch([ids[i] for i in chunk], settings)
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not _is_oom(err) or batch == 1:
                        raise
                    batch = max(1, batch // 2)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
                start += len(chunk)
                bar.update(len(chunk))
        bar.close()
        self.generated_tokens += sum(map(len, results))
        return results

    @torch.inference_mode()
    def _generate_batch(self, batch_ids: list[list[int]], s: GenerationSettings) -> list[list[int]]:
        """``model.generate`` on one left-padded batch; each answer cut after its first EOS."""
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
        try:
            out = self.model.generate(
                input_ids=x.to(dev),
                attention_mask=mask.to(dev),
                generation_config=config,
                logits_processor=[refuse_non_finite],
            )
        finally:
            self.model.generation_config = own
        out = out[:, width:].cpu()
        eos = set(self.eos_ids.tolist())
        results = []
        for row in out.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row)) if not s.ignore_eos else len(row)
            results.append(row[:cut])
        return results


def generate(model, tokenizer, prompts: list[str], settings: GenerationSettings | None = None) -> list[str]:
    """Answer ``prompts`` with a Hugging Face model; see :class:`HFBackend`."""
    return HFBackend(model, tokenizer).generate(prompts, settings)


BACKENDS = ("hf", "vllm")
