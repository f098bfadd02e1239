"""AsFT's one configuration: ``TrainingArguments`` plus the model, data, anchor and regulariser settings.

``python -m asft.train`` parses exactly this dataclass (as trl's scripts parse ``SFTConfig``), and
:func:`asft.finetune.fine_tune` and :class:`~asft.trainer.AsftTrainer` read it. Defaults follow the AsFT
paper and its release (LoRA r 8, alpha 32, dropout 0.05 on q_proj/v_proj, batch 8, 10 epochs, lr 5e-5, λ 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .regularizer import FORMS

MODES = ("lora", "full", "full-targets")
RECIPES = ("hf", "release")
# Architectures peft's LoRA table lacks (Phi-3 fuses q, k and v into one projection).
EXTRA_TARGET_MODULES = {"phi3": ["qkv_proj"], "qwen2_moe": ["q_proj", "v_proj"]}


def default_target_modules(model_type: str | None) -> list[str]:
    """peft's default LoRA target modules for a transformers ``model_type`` (plus :data:`EXTRA_TARGET_MODULES`)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    found = PEFT_TARGETS.get(model_type) or EXTRA_TARGET_MODULES.get(model_type)
    if not found:
        raise ValueError(f"no default target modules for model type {model_type!r}: name them with --target_modules")
    return list(found)


METHODS = ("asft", "sft", "safelora", "alt")


@dataclass
class AsftConfig(TrainingArguments):
    """Training arguments for AsFT and its baselines (see the module docstring)."""

    # ------------------------------------------------------------------------------ model, data, method
    aligned: str | None = field(default=None, metadata={"help": "the aligned model to fine-tune (a local directory)"})
    data: str | None = field(
        default=None, metadata={"help": "AsFT JSON fine-tuning data: a list of {instruction, input, output}"}
    )
    method: str = field(
        default="asft",
        metadata={
            "help": "asft: task loss + lambda * regulariser; sft: plain; safelora: SFT then Safe LoRA's projection; "
            "alt: AsFT_Alt (harmful directions from the data's harmful records)",
            "choices": METHODS,
        },
    )
    n: int | None = field(default=None, metadata={"help": "re-mix the data: number of task samples"})
    p: float | None = field(default=None, metadata={"help": "re-mix the data: harmful fraction (floor(p*n) harmful)"})
    # -------------------------------------------------------------------------------------------- anchor
    anchor: str | None = field(
        default=None, metadata={"help": "saved d_aligned direction (python -m landscape.directions compute ...)"}
    )
    base: str | None = field(
        default=None, metadata={"help": "base checkpoint: d_aligned = aligned - base when no --anchor is given"}
    )
    report: str | None = field(
        default=None, metadata={"help": "verification report: results.json of python -m landscape.epl"}
    )
    anchor_min_ratio: float = field(
        default=13.0,
        metadata={
            "help": "EPL ratio d_aligned / d_harm the report must show (13: the smallest at which AsFT's benefit "
            "was reported; see figures/README.md)"
        },
    )
    allow_unverified_anchor: bool = field(
        default=False,
        metadata={"help": "train even when the report is missing or failing (recorded with the trained model)"},
    )
    # --------------------------------------------------------------------------------------- regulariser
    lambda_reg: float = field(
        default=1.0, metadata={"help": "lambda, weight of the regulariser (0 = plain SFT)", "aliases": ["--lambda"]}
    )
    form: str = field(
        default="reference",
        metadata={
            "help": "reference: (I - VV^T/|V|_F), the released code; projector: I - U_k U_k^T; "
            "aligned: the Fig. 4(b) ablation; controls: l2 (plain |dW|^2), random (a seeded random subspace of "
            "rank k instead of V's)",
            "choices": FORMS,
        },
    )
    mode: str = field(
        default="lora",
        metadata={
            "help": "lora (peft adapters on the target modules); full (every parameter trains, the paper's full-"
            "parameter AsFT; the penalty covers the anchored target modules); full-targets (only the target "
            "weights train)",
            "choices": MODES,
        },
    )
    recipe: str = field(
        default="hf",
        metadata={
            "help": "hf: the Trainer's schedule and gradient clipping as configured; release: AsFT's released "
            "recipe (StepLR, gamma 0.85 per epoch, no gradient clipping)",
            "choices": RECIPES,
        },
    )
    alt_harmful: str | None = field(
        default=None,
        metadata={
            "help": "AsFT_Alt: harmful examples ({instruction, input, output} JSON) to estimate harmful directions "
            "from; must be disjoint from --data (the training mix's own harmful records are an oracle no "
            "defender has)"
        },
    )
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "modules to adapt and anchor (default: peft's choice for the architecture, q_proj v_proj on "
            "Llama as in the paper, c_attn on GPT-2, qkv_proj on Phi-3)"
        },
    )
    k: int = field(default=8, metadata={"help": "top-k singular directions of V (projector, aligned, random, alt)"})
    control_seed: int = field(default=0, metadata={"help": "seed of the random control's subspaces"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    include_lora_scale: bool = field(
        default=False,
        metadata={"help": "penalise s*B*A (the update applied) instead of B*A (what the released code penalises)"},
    )
    safelora_threshold: float = field(
        default=0.5,
        metadata={"help": "Safe LoRA threshold mode: project modules whose cosine (5 decimals) is <= this"},
    )
    safelora_mode: str = field(
        default="threshold",
        metadata={
            "help": "Safe LoRA: threshold (cosine <= tau) or number (the N lowest cosines, IBM's default)",
            "choices": ("threshold", "number"),
        },
    )
    safelora_number: int = field(default=1, metadata={"help": "Safe LoRA number mode: modules to project"})
    trajectory_steps: int = field(
        default=10,
        metadata={
            "help": "every N steps record the update's cosine with d_aligned (--base or --anchor), its share in "
            "d_aligned's top-k subspace against a random null, and its coordinates on --trajectory_plane "
            "(trajectory.json beside the model; 0: off)"
        },
    )
    trajectory_plane: list[str] | None = field(
        default=None,
        metadata={"help": "two saved directions (a 2-D map's): the trajectory's coordinates in their plane"},
    )
    plan: bool = field(
        default=False,
        metadata={
            "help": "print the bytes training will hold (weights, gradients, optimizer, anchor, activations) from the "
            "model's shapes (a bare config.json is enough) and exit; nothing is trained or written"
        },
    )
    # ---------------------------------------------------------- TrainingArguments with AsFT's defaults
    output_dir: str | None = field(default="runs/asft", metadata={"help": "where the model and logs go"})
    num_train_epochs: float = field(default=10.0, metadata={"help": "epochs (the paper: 10)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate (the paper: 5e-5)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "batch size (the paper: 8)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "learning-rate schedule"})
    logging_steps: float = field(default=10, metadata={"help": "log every N steps"})
    save_strategy: str = field(default="no", metadata={"help": "checkpointing during training"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep the collator's columns"})

    def __post_init__(self):
        if self.data_seed is None:
            self.data_seed = self.seed  # the data order follows --seed, as the release's runs do
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}. Available: {', '.join(METHODS)}")
        if self.lambda_reg < 0:
            raise ValueError(f"--lambda must be >= 0, got {self.lambda_reg}")
        if self.form not in FORMS:
            raise ValueError(f"Unknown regulariser form {self.form!r}. Available: {', '.join(FORMS)}")
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}. Available: {', '.join(MODES)}")
        if self.recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {self.recipe!r}. Available: {', '.join(RECIPES)}")
        if self.recipe == "release":
            self.max_grad_norm = 0.0  # the release does not clip gradients
        if self.k < 1 or self.lora_r < 1:
            raise ValueError(f"--k and --lora_r must be >= 1, got k={self.k}, lora_r={self.lora_r}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("--target_modules is empty")
        if self.p is not None and not 0 <= self.p <= 1:
            raise ValueError(f"--p must be in [0, 1], got {self.p} (the poison fraction)")
        if self.n is not None and self.n < 0:
            raise ValueError(f"--n must be >= 0, got {self.n}")
        if self.trajectory_steps < 0:
            raise ValueError(f"--trajectory_steps must be >= 0 (0: off), got {self.trajectory_steps}")
        if self.trajectory_plane is not None and len(self.trajectory_plane) != 2:
            raise ValueError(f"--trajectory_plane takes two saved directions, got {len(self.trajectory_plane)}")
        if self.anchor_min_ratio <= 0:
            raise ValueError(f"--anchor_min_ratio must be > 0, got {self.anchor_min_ratio}")

    def resolve_target_modules(self, model) -> list[str]:
        """``target_modules``, or the architecture's default when none were named (kept in the config)."""
        if self.target_modules is None:
            self.target_modules = default_target_modules(getattr(model.config, "model_type", None))
        return self.target_modules

    @property
    def effective_lambda(self) -> float:
        """λ as training uses it: 0 for the SFT and Safe LoRA baselines."""
        return self.lambda_reg if self.method in ("asft", "alt") else 0.0

    @property
    def effective_form(self) -> str:
        """AsFT_Alt penalises the component along its harmful directions (the ``aligned`` form)."""
        return "aligned" if self.method == "alt" else self.form

    def check_run(self) -> None:
        """What a full run needs beyond a valid config (``fine_tune`` checks it before anything is written)."""
        if not self.aligned or not self.data:
            raise ValueError("--aligned (the model to fine-tune) and --data are required")
        if self.method in ("asft", "safelora") and self.anchor is None and self.base is None:
            raise ValueError(f"method {self.method!r} needs an anchor: --anchor DIR or --base (with --aligned)")
        if self.method == "alt" and not self.alt_harmful:
            raise ValueError(
                "method 'alt' needs --alt_harmful: harmful examples disjoint from --data (estimating harmful "
                "directions from the training mix's own harmful records assumes the defender knows them)"
            )
