"""AsftTrainer: the Hugging Face Trainer with AsFT's regulariser added to the task loss.

L = L_task + λ·Σ_modules ‖C⊥·ΔW‖²_F (see :mod:`asft.regularizer`). With LoRA, ΔW = B·A of each adapted
module; in full-parameter mode ΔW = W − W_aligned. Only the loss is overridden; the task loss and the
regulariser are logged separately (``task_loss``, ``asft_reg``).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from .anchor import Anchor
from .regularizer import full_penalty, lora_penalty


def prepare_model(model, config, anchor: Anchor):
    """Wrap ``model`` for training: peft LoRA on the target modules, or unfreeze only them (full mode).

    Raises:
        ValueError: when a target module is missing from the model (the error lists what it has) or the
            anchor covers none of the adapted modules.
    """
    names = [n for n, _ in model.named_modules()]
    have = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    for t in config.target_modules:
        if not any(n.split(".")[-1] == t for n in names):
            raise ValueError(f"Unknown target module {t!r}. The model's linear modules: {', '.join(have)}")
    weights = {f"{n}.weight" for n in names if n.split(".")[-1] in config.target_modules}
    missing = sorted(weights - set(anchor.modules))
    if missing:
        raise ValueError(
            f"the anchor does not cover target module weight {missing[0]!r} "
            f"({len(missing)} of {len(weights)} missing): its modules do not match the model"
        )
    if config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lcfg)
    for n, p in model.named_parameters():
        p.requires_grad_(n in weights)
    return model


class AsftTrainer(Trainer):
    """``Trainer`` whose loss is L_task + λ·regulariser; pass ``anchor=`` and an :class:`~asft.config.AsftConfig`."""

    def __init__(self, *args, anchor: Anchor, **kwargs):
        super().__init__(*args, **kwargs)
        self.anchor = anchor
        cfg = self.args
        dev = next(self.model.parameters()).device
        self._terms = []  # (ModuleAnchor on device, lora module | (param, W_aligned))
        for name, mod in self.model.named_modules():
            weight = f"{name}.weight"
            if cfg.mode == "lora" and hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                key = weight.removeprefix("base_model.model.").replace(".base_layer", "")
                if key in anchor.modules:
                    self._terms.append((anchor.modules[key].to(dev), mod))
            elif cfg.mode == "full" and weight in anchor.modules and isinstance(mod, torch.nn.Linear):
                self._terms.append((anchor.modules[weight].to(dev), (mod.weight, mod.weight.detach().clone())))
        if not self._terms:
            raise ValueError("no adapted module of the model is covered by the anchor")
        self._log_acc = {"task_loss": 0.0, "asft_reg": 0.0, "n": 0}

    def regularizer(self) -> torch.Tensor:
        """Σ over adapted modules of ‖C·ΔW‖²_F (fp32), before λ."""
        cfg = self.args
        total = None
        for anchor, target in self._terms:
            if cfg.mode == "lora":
                B = target.lora_B["default"].weight
                A = target.lora_A["default"].weight
                s = target.scaling["default"] if cfg.include_lora_scale else 1.0
                term = lora_penalty(cfg.form, anchor, B, A, s)
            else:
                W, W0 = target
                term = full_penalty(cfg.form, anchor, W - W0)
            total = term if total is None else total + term
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        lam = self.args.lambda_reg
        if lam == 0.0:
            loss = task  # plain SFT: the regulariser is not even computed
            reg_val = 0.0
        else:
            reg = self.regularizer()
            loss = task + lam * reg.to(task.dtype)
            reg_val = float(reg.detach())
        if model.training:
            self._log_acc["task_loss"] += float(task.detach())
            self._log_acc["asft_reg"] += reg_val
            self._log_acc["n"] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        n = self._log_acc["n"]
        if n and ("loss" in logs or "train_loss" in logs):
            logs["task_loss"] = round(self._log_acc["task_loss"] / n, 6)
            logs["asft_reg"] = round(self._log_acc["asft_reg"] / n, 6)
            self._log_acc = {"task_loss": 0.0, "asft_reg": 0.0, "n": 0}
        super().log(logs, *args, **kwargs)
