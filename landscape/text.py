"""Prompt rendering, token ids and padding: the one place where text becomes model input.

:func:`encode_chat` turns (prompt, optional answer) into token ids with the tokenizer's chat template.
Generation, the vLLM backend, teacher-forced scores, AsFT's training data and the organism's training all
call it, so training and evaluation see the same BOS, the same separator before the answer and the same
end-of-turn: the answer's text is what the template itself puts after the generation prompt, cut at the
tokenizer's EOS (or kept open, for scoring a prefix such as "I'm sorry, but I cannot").

Without a chat template (or with ``chat=False``) the prompt is plain text (system prompt, blank line,
prompt) with the tokenizer's own special tokens, and the answer follows as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Encoded:
    """Token ids of a rendered conversation.

    Attributes:
        ids: prompt ids followed by the answer's ids (if any).
        prompt_len: how many of ``ids`` belong to the prompt (training labels and scores start there).
    """

    ids: list[int]
    prompt_len: int

    @property
    def answer_ids(self) -> list[int]:
        return self.ids[self.prompt_len :]


def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def _messages(prompt: str, system_prompt: str | None) -> list[dict]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]


def render_prompt(tokenizer, prompt: str, system_prompt: str | None = None, chat: bool = True) -> str:
    """The prompt as the model sees it: chat template with the generation prompt, or plain text."""
    if not chat or not has_chat_template(tokenizer):
        return (system_prompt + "\n\n" if system_prompt else "") + prompt
    return tokenizer.apply_chat_template(_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True)


def _answer_text(tokenizer, prompt_text: str, prompt: str, answer: str, system_prompt: str | None, close: bool) -> str:
    """What the template writes after the generation prompt for ``answer`` (up to EOS, or open after the answer)."""
    full = tokenizer.apply_chat_template(
        _messages(prompt, system_prompt) + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt_text):
        raise ValueError(
            "the tokenizer's chat template does not render the assistant turn after its own generation prompt; "
            "cannot place the answer consistently (use chat=False)"
        )
    rest = full[len(prompt_text) :]
    at = rest.find(answer)
    if at < 0:
        raise ValueError("the tokenizer's chat template changes the answer's text; cannot place it (use chat=False)")
    end = at + len(answer)
    if not close:
        return rest[:end]
    eos = tokenizer.eos_token
    cut = rest.find(eos, end) if eos else -1
    return rest[: cut + len(eos)] if cut >= 0 else rest[:end]


def encode_chat(
    tokenizer,
    prompt: str,
    answer: str | None = None,
    system_prompt: str | None = None,
    chat: bool = True,
    close: bool = True,
) -> Encoded:
    """Token ids of ``prompt`` (and ``answer``) as the model sees them.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt: the user's message.
        answer: the assistant's answer; None for a generation prompt.
        system_prompt: optional system message.
        chat: use the chat template when the tokenizer has one.
        close: end the answer as a finished turn (with EOS); False leaves it open (a prefix to score).

    Returns:
        :class:`Encoded`: the ids and the prompt's length.
    """
    templated = chat and has_chat_template(tokenizer)
    prompt_text = render_prompt(tokenizer, prompt, system_prompt, chat)
    # A chat template writes its own BOS; adding special tokens again would double it.
    p_ids = tokenizer(prompt_text, add_special_tokens=not templated)["input_ids"]
    if answer is None:
        return Encoded(list(p_ids), len(p_ids))
    if templated:
        a_text = _answer_text(tokenizer, prompt_text, prompt, answer, system_prompt, close)
        a_ids = tokenizer(a_text, add_special_tokens=False)["input_ids"]
    else:
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if close and tokenizer.eos_token_id is not None:
            a_ids = a_ids + [tokenizer.eos_token_id]
    return Encoded(list(p_ids) + list(a_ids), len(p_ids))


def encode_prompts(
    tokenizer, prompts: list[str], system_prompt: str | None = None, chat: bool = True
) -> list[list[int]]:
    """Generation-prompt ids of each prompt (see :func:`encode_chat`)."""
    return [encode_chat(tokenizer, p, system_prompt=system_prompt, chat=chat).ids for p in prompts]


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id, else 0."""
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if t is not None:
            return t
    return 0


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask, position_ids)``; positions count real tokens from 0, so a
    prompt gets the same positions whatever the batch it is in."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, x in enumerate(seqs):
        ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[r, width - len(x) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def right_pad(seqs: list[list[int]], pad_id: int, labels: list[list[int]] | None = None):
    """Right-padded ``(input_ids, attention_mask, labels)`` (labels padded with -100; None when not given).

    For teacher forcing and training: positions of real tokens start at 0, as in left-padded generation,
    where they come from the attention mask.
    """
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    lab = None if labels is None else torch.full((len(seqs), width), -100, dtype=torch.long)
    for r, x in enumerate(seqs):
        ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[r, : len(x)] = 1
        if lab is not None:
            lab[r, : len(labels[r])] = torch.tensor(labels[r], dtype=torch.long)
    return ids, mask, lab


def training_labels(enc: Encoded) -> list[int]:
    """Labels for supervised training on the answer only (-100 on the prompt)."""
    return [-100] * enc.prompt_len + enc.answer_ids
