"""How answers are generated (:class:`GenerationSettings`), and the checks every backend's generation shares.

The backends themselves live in :mod:`landscape.backend` (Hugging Face) and :mod:`landscape.vllm_backend`;
:func:`generate` answers prompts with a Hugging Face model in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
