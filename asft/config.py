"""AsFT's training configuration: ``TrainingArguments`` plus the anchor and regulariser settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .regularizer import FORMS

MODES = ("lora", "full")


@dataclass
class AsftConfig(TrainingArguments):
    """Training arguments for :class:`~asft.trainer.AsftTrainer` (defaults follow the AsFT paper)."""

    lambda_reg: float = field(default=1.0, metadata={"help": "λ, weight of the regulariser (0 = plain SFT)"})
    form: str = field(default="reference", metadata={"help": f"regulariser form: {', '.join(FORMS)}"})
    mode: str = field(default="lora", metadata={"help": "lora (peft LoRA adapters) or full (all target weights)"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "modules to adapt and anchor (the paper: q_proj, v_proj)"},
    )
    k: int = field(default=8, metadata={"help": "top-k singular directions of V (projector and aligned forms)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    include_lora_scale: bool = field(
        default=False,
        metadata={"help": "penalise s·B·A (the update applied) instead of B·A (what the released code penalises)"},
    )
    anchor_min_ratio: float = field(default=3.0, metadata={"help": "EPL ratio d_aligned/d_harm a report must show"})
    allow_unverified_anchor: bool = field(
        default=False,
        metadata={
            "help": "train even when the anchor's verification report is missing or failing (logged and stored)"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.lambda_reg < 0:
            raise ValueError(f"lambda_reg must be >= 0, got {self.lambda_reg}")
        if self.form not in FORMS:
            raise ValueError(f"Unknown regulariser form {self.form!r}. Available: {', '.join(FORMS)}")
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}. Available: {', '.join(MODES)}")
        if self.k < 1 or self.lora_r < 1:
            raise ValueError(f"k and lora_r must be >= 1, got k={self.k}, lora_r={self.lora_r}")
        if not self.target_modules:
            raise ValueError("target_modules is empty")
