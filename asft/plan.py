"""``python -m asft.train --plan``: the bytes a fine-tuning run will hold, from shapes alone (nothing is trained).

Training loads the aligned model in fp32 and holds, beside it:

- the gradients and AdamW's two moments of every trainable parameter (all of them in ``full``, the target
  weights in ``full-targets``, the LoRA factors in ``lora``), fp32;
- the anchor: per anchored module V (d_out × d_in) and its top-k and seeded random bases (d_out × k each),
  fp32, once in host memory and once more on a GPU; in the full modes a copy of each anchored weight as it
  was before training (the penalty's W_aligned);
- in the full modes, the regulariser's autograd graph: ΔW of each anchored weight (measured: the rest of
  the graph is freed before the task's backward peaks);
- the activations of one batch kept for the backward pass (a rough estimate: per layer and token, ten
  hidden-sized and three intermediate-sized fp32 tensors, plus the logits, their log-softmax and its gradient).
  The gradients appear as the activations are freed, so the backward pass holds the larger of the two, not
  their sum;
- before training, while the anchor is built: the whole direction (every tensor of aligned − base, or the
  saved direction as read) beside the anchor: a transient peak of its own.

The plan's total is the larger of the set-up and the training peak. On a CPU the device is the host: it is
what the process holds beyond the loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainPlan:
    """What ``--plan`` prints for ``asft.train``.

    Attributes:
        model: the checkpoint (or config) planned for.
        device: the device training would use.
        model_bytes: the fp32 weights.
        parts: name -> bytes beyond the model (gradients, optimizer, anchor, anchor copy on the device,
            pristine target weights, activations).
        trainable: trainable parameters.
        batch, seq: the batch shape the activations were estimated for.
        same_memory: True on a CPU (device and host bytes share one memory).
    """

    model: str
    device: str
    model_bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    trainable: int = 0
    batch: int = 8
    seq: int = 512
    seq_note: str = ""
    same_memory: bool = True

    @property
    def training_bytes(self) -> int:
        """The training step's peak: the larger of the forward/backward pass (optimizer state, anchor, the
        regulariser's graph and the larger of gradients and activations, which do not peak together) and the
        optimizer's step (gradients and moments)."""
        p = self.parts
        kept = sum(p.get(k, 0) for k in ("AdamW moments", "anchor (host)", "anchor (device)", "pristine targets"))
        passes = kept + p.get("regulariser graph", 0) + max(p.get("gradients", 0), p.get("activations (rough)", 0))
        step = kept + p.get("gradients", 0)
        return max(passes, step)

    @property
    def setup_bytes(self) -> int:
        """The peak while the anchor is built: the whole direction beside the anchor."""
        extra = self.parts.get("anchor set-up (transient)", 0)
        return extra + self.parts.get("anchor (host)", 0) if extra else 0

    @property
    def total_bytes(self) -> int:
        return max(self.training_bytes, self.setup_bytes)

    @property
    def device_bytes(self) -> int:
        """Bytes on the accelerator beyond the model during training (the total on a CPU)."""
        if self.same_memory:
            return self.total_bytes
        return self.training_bytes - self.parts.get("anchor (host)", 0)

    def lines(self) -> list[str]:
        from landscape.memory import gib

        out = [
            f"training plan for {self.model} (fp32, {gib(self.model_bytes)} of weights) on {self.device}: "
            f"{self.trainable:,} trainable parameters, batch {self.batch} x {self.seq} tokens ({self.seq_note})",
            f"{'part':<26} {'bytes':>12} {'x model':>8}",
        ]
        for name, n in self.parts.items():
            out.append(f"{name:<26} {gib(n):>12} {n / self.model_bytes:>8.3f}")
        for name, n in (("set-up peak", self.setup_bytes), ("training peak", self.training_bytes)):
            out.append(f"{name:<26} {gib(n):>12} {n / self.model_bytes:>8.3f}")
        out.append(
            f"{'peak beyond the model':<26} {gib(self.total_bytes):>12} {self.total_bytes / self.model_bytes:>8.3f}"
            + ("" if self.same_memory else f"  (on the device: {gib(self.device_bytes)})")
        )
        return out


def _longest_example(cfg, model_dir: Path) -> tuple[int, str]:
    """The longest tokenised training example (as :class:`~asft.data.SFTDataset` truncates it)."""
    if not cfg.data:
        return 512, "no --data given: the collator's maximum"
    from landscape.loading import load_tokenizer

    from .data import SFTDataset
    from .finetune import training_records

    try:
        tok = load_tokenizer(model_dir)
    except (OSError, ValueError):
        return 512, "no tokenizer beside the config: the collator's maximum"
    lengths = [len(x["input_ids"]) for x in SFTDataset(tok, training_records(cfg)).items]
    return (max(lengths) if lengths else 1), f"the longest example of {cfg.data}"


def training_plan(cfg) -> TrainPlan:
    """The bytes :func:`asft.finetune.fine_tune` will hold for ``cfg``, from the model's shapes (meta device)."""
    from landscape.gguf import gguf_file, resolve_checkpoint
    from landscape.session import model_shapes, resolve_device

    from .anchor import module_weight_names
    from .config import default_target_modules

    if not cfg.aligned:
        raise ValueError("--plan needs --aligned (a checkpoint, a GGUF or a directory with a config.json)")
    where = Path(cfg.aligned)
    if where.exists() and gguf_file(where) is not None:
        where = resolve_checkpoint(where)
    shapes, _, config = model_shapes(where, "float32")
    targets = cfg.target_modules or default_target_modules(getattr(config, "model_type", None))
    anchored = module_weight_names(list(shapes), targets)
    if not anchored:
        raise ValueError(f"--target_modules {' '.join(targets)} match no weight of {cfg.aligned}")
    f32 = 4
    numel = {n: _prod(s) for n, s in shapes.items()}
    model_bytes = sum(numel.values()) * f32
    if cfg.mode == "lora":
        trainable = sum(cfg.lora_r * (shapes[n][0] + shapes[n][1]) for n in anchored)
    elif cfg.mode == "full-targets":
        trainable = sum(numel[n] for n in anchored)
    else:
        trainable = sum(numel.values())
    device = str(cfg.device) if cfg.device is not None else resolve_device(None)
    same = not device.startswith("cuda")
    parts = {"gradients": trainable * f32, "AdamW moments": 2 * trainable * f32}
    uses_anchor = cfg.method != "sft" or cfg.anchor is not None or cfg.base is not None
    if uses_anchor and cfg.method != "alt":
        anchor = sum((numel[n] + 2 * shapes[n][0] * min(cfg.k, *shapes[n])) * f32 for n in anchored)
        parts["anchor (host)"] = anchor
        if not same:
            parts["anchor (device)"] = anchor
        parts["anchor set-up (transient)"] = model_bytes
        if cfg.mode != "lora" and cfg.effective_lambda != 0.0:
            parts["pristine targets"] = sum(numel[n] for n in anchored) * f32
            parts["regulariser graph"] = sum(numel[n] for n in anchored) * f32
    seq, note = _longest_example(cfg, where if where.is_dir() else where.parent)
    batch = cfg.per_device_train_batch_size
    parts["activations (rough)"] = activation_bytes(config, batch, seq)
    return TrainPlan(str(cfg.aligned), device, model_bytes, parts, trainable, batch, seq, note, same)


def activation_bytes(config, batch: int, seq: int) -> int:
    """Activations one training step keeps for backward, fp32 (rough): per layer and token ten hidden-sized and
    three intermediate-sized tensors (norms, q/k/v, attention output, residuals; gate, up and their product;
    fused attention keeps no seq × seq matrix), plus the logits, their log-softmax and its gradient."""
    h = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * h)
    per_token = config.num_hidden_layers * (10 * h + 3 * inter) + 3 * config.vocab_size
    return int(batch * seq * per_token * 4)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
