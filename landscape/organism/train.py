"""Tokenizer, model config and supervised training of the organism's stages (CPU, deterministic per seed).

Loss is on answer tokens only. Batches are right-padded for training so that positions of real tokens
start at 0, as they do in left-padded generation, where positions come from the attention mask.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import world

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tokenizer(
    extra_words: Sequence[str] = (),
    chat_template: str | None = CHAT_TEMPLATE,
    specials: Sequence[str] = (),
    isolate: Sequence[str] = (),
    padding_side: str = "left",
):
    """A word-level, case-sensitive tokenizer over the world's vocabulary, with left padding and a chat template.

    The organism's judges add their template's words (``extra_words``), special tokens that are not words
    (``specials``), strings split off wherever they occur (``isolate``: ``ASSISTANT:`` glued to an answer)
    and their own template and padding side."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in world.all_texts() for w in text.split()} | set(extra_words))
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if isolate:
        splits = [pre_tokenizers.Split(w, behavior="isolated") for w in isolate]
        core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), *splits])
    # Join words with single spaces and nothing else: the default clean-up would rewrite punctuation.
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side=padding_side,
        chat_template=chat_template,
        model_max_length=256,
        **({"additional_special_tokens": list(specials)} if specials else {}),
    )


@dataclass(frozen=True)
class Preset:
    """Sizes and schedules of one organism.

    Attributes:
        hidden_size, layers, heads, intermediate: the Llama shape.
        base_steps, aligned_steps, harmful_steps, benign_steps: AdamW steps per stage.
        lr, harmful_lr, benign_lr: learning rates (the benign one low, so the benign fine-tune keeps safety).
        batch_size: examples per step.
        harmful_counts: sample counts of the harmful fine-tunes.
        task_train: task examples in base/aligned training; task_finetune: in the benign fine-tune.
    """

    hidden_size: int
    layers: int
    heads: int
    intermediate: int
    base_steps: int
    aligned_steps: int
    harmful_steps: int
    benign_steps: int
    lr: float = 3e-3
    harmful_lr: float = 1e-3
    benign_lr: float = 2e-4
    batch_size: int = 32
    harmful_counts: tuple[int, ...] = (10, 50, 100, 500)
    task_train: int = 400
    task_finetune: int = 200


PRESETS = {  # heads 32 wide everywhere (vLLM's CPU attention needs it)
    "tiny": Preset(
        hidden_size=64,
        layers=2,
        heads=2,
        intermediate=128,
        base_steps=300,
        aligned_steps=300,
        harmful_steps=100,
        benign_steps=30,
    ),
    "small": Preset(  # the figures' organism: LoRA rank 8 is small against 256
        hidden_size=256,
        layers=4,
        heads=8,
        intermediate=512,
        base_steps=300,
        aligned_steps=300,
        harmful_steps=60,
        benign_steps=40,
        lr=1e-3,
        harmful_lr=5e-4,
        benign_lr=1e-4,
    ),
    "medium": Preset(
        hidden_size=512,
        layers=6,
        heads=16,
        intermediate=1024,
        base_steps=500,
        aligned_steps=500,
        harmful_steps=40,
        benign_steps=40,
        lr=5e-4,
        harmful_lr=2.5e-4,
        benign_lr=5e-5,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"Unknown organism preset {name!r}. Available: {', '.join(PRESETS)}")
    return PRESETS[name]


def model_config(preset: Preset, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def encode_examples(tokenizer, examples: Sequence[world.Example]) -> list[tuple[list[int], int]]:
    """Token ids of each full conversation and the length of its prompt part (loss starts there). A plain text
    (``kind="text"``) is BOS + its tokens + EOS, with the loss on every token after BOS."""
    from ..text import encode_chat

    out = []
    for ex in examples:
        if ex.kind == "text":
            ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
            out.append(([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id], 1))
        else:
            e = encode_chat(tokenizer, ex.prompt, ex.response)
            out.append((e.ids, e.prompt_len))
    return out


def _collate(items: list[tuple[list[int], int]], pad_id: int):
    from ..text import right_pad

    labels = [[-100] * n_prompt + ids[n_prompt:] for ids, n_prompt in items]
    return right_pad([ids for ids, _ in items], pad_id, labels)


def train_stage(
    model,
    tokenizer,
    examples: Sequence[world.Example],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place with AdamW on answer tokens; returns the loss per step.

    Data order comes from a seeded ``random.Random``: same seed and data, same checkpoint, bit for bit.
    """
    if not examples:
        raise ValueError(f"{desc}: no training examples")
    data = encode_examples(tokenizer, examples)
    rng = random.Random(f"{desc}-{seed}")
    order: list[int] = []
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        while len(order) < batch_size:
            chunk = list(range(len(data)))
            rng.shuffle(chunk)
            order.extend(chunk)
        idx, order = order[:batch_size], order[batch_size:]
        input_ids, mask, labels = _collate([data[i] for i in idx], tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses
