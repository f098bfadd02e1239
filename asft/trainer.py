"""AsftTrainer: the Hugging Face Trainer with AsFT's regulariser added to the task loss.

L = L_task + λ·Σ_modules ‖C·ΔW‖²_F (see :mod:`asft.regularizer`). With LoRA, ΔW = B·A of each adapted
module; in full-parameter mode ΔW = W − W_aligned. The trainer wraps the model itself (trl's pattern): LoRA
adapters from ``peft_config`` (or from the config's ``lora_*`` fields), or, in full mode, only the target
weights left trainable. Only the loss is overridden; the task loss and the regulariser are logged beside
the total (``task_loss``, ``asft_reg``).
"""

from __future__ import annotations

import warnings

import torch
from transformers import Trainer

from .anchor import Anchor
from .config import AsftConfig
from .regularizer import full_penalty, is_transposed, lora_penalty, module_anchor


def _check_targets(model, config: AsftConfig, anchor: Anchor | None) -> set[str]:
    """The target modules' weight names; errors list what the model has and what the anchor lacks."""
    names = [n for n, _ in model.named_modules()]
    have = sorted({n.split(".")[-1] for n, m in model.named_modules() if _is_dense(m)})
    for t in config.target_modules:
        if not any(n.split(".")[-1] == t for n in names):
            raise ValueError(f"Unknown target module {t!r}. The model's linear modules: {', '.join(have)}")
    weights = {f"{n}.weight" for n in names if n.split(".")[-1] in config.target_modules}
    if anchor is None:  # plain SFT: nothing to cover
        return weights
    missing = sorted(weights - set(anchor.modules))
    if missing:
        raise ValueError(
            f"the anchor does not cover target module weight {missing[0]!r} "
            f"({len(missing)} of {len(weights)} missing): its modules do not match the model"
        )
    # Shapes are checked always, also when the anchor's verification was overridden: an anchor of another
    # model would otherwise give a penalty about nothing.
    params = dict(model.named_parameters())
    for w in sorted(weights):
        want, got = tuple(params[w].shape), tuple(anchor.modules[w].V.shape)
        if want != got:
            raise ValueError(f"the anchor's {w!r} is {list(got)}, the model's weight is {list(want)}: another model")
    return weights


def _is_dense(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or is_transposed(module)


def lora_config(config: AsftConfig):
    """peft's LoraConfig from the config's ``lora_*`` fields and target modules."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )


class AsftTrainer(Trainer):
    """``Trainer`` whose loss is L_task + λ·regulariser.

    Args:
        model: the aligned model (not yet wrapped).
        args: an :class:`~asft.config.AsftConfig`.
        anchor: the (verified) :class:`~asft.anchor.Anchor`; None for plain SFT (λ = 0), which needs none.
        peft_config: LoRA settings in lora mode (default: built from ``args``).
        **kwargs: passed to ``Trainer`` (datasets, collator, ...).
    """

    def __init__(self, model, args: AsftConfig, anchor: Anchor | None, peft_config=None, **kwargs):
        if not isinstance(args, AsftConfig):
            raise TypeError(f"AsftTrainer needs an AsftConfig, got {type(args).__name__}")
        if anchor is None and args.effective_lambda != 0.0:
            raise ValueError(f"method {args.method!r} with lambda {args.effective_lambda} needs an anchor")
        args.resolve_target_modules(model)
        weights = _check_targets(model, args, anchor)
        # LoRA's A is drawn at random when the model is wrapped, before Trainer.__init__ seeds anything: seed it
        # here, or the same config trains differently from run to run.
        from transformers import set_seed

        set_seed(args.seed)
        if args.mode == "lora":
            from peft import get_peft_model

            with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, peft_config or lora_config(args))
        else:
            if peft_config is not None:
                raise ValueError(f"peft_config is for mode 'lora'; mode {args.mode!r} trains the weights themselves")
            for n, p in model.named_parameters():
                p.requires_grad_(args.mode == "full" or n in weights)
        super().__init__(model=model, args=args, **kwargs)
        self.anchor = anchor
        first = next(self.model.parameters())
        dev, adt = first.device, (torch.float64 if first.dtype == torch.float64 else torch.float32)
        self._terms = []  # (ModuleAnchor on device, lora module | (param, W_aligned))
        for name, mod in self.model.named_modules() if anchor is not None else ():
            weight = f"{name}.weight"
            if args.mode == "lora" and hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                key = weight.removeprefix("base_model.model.").replace(".base_layer", "")
                if key in anchor.modules:
                    self._terms.append((module_anchor(anchor, key, mod).to(dev, adt), mod))
            elif args.mode != "lora" and weight in anchor.modules and _is_dense(mod):
                a = module_anchor(anchor, weight, mod).to(dev, adt)
                self._terms.append((a, (mod.weight, mod.weight.detach().clone(), is_transposed(mod))))
        if not self._terms and anchor is not None:
            raise ValueError("no adapted module of the model is covered by the anchor")
        self._log_acc = {"task_loss": 0.0, "asft_reg": 0.0, "n": 0}

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The release's recipe decays the learning rate by 0.85 after every epoch (StepLR); else HF's schedule."""
        if self.args.recipe != "release":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            steps_per_epoch = max(1, len(self.get_train_dataloader()) // max(1, self.args.gradient_accumulation_steps))
            opt = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=steps_per_epoch, gamma=0.85)
        return self.lr_scheduler

    def regularizer(self) -> torch.Tensor:
        """Σ over adapted modules of ‖C·ΔW‖²_F (fp32), before λ."""
        cfg = self.args
        form = cfg.effective_form
        total = None
        for anchor, target in self._terms:
            if cfg.mode == "lora":
                B = target.lora_B["default"].weight
                A = target.lora_A["default"].weight
                s = target.scaling["default"] if cfg.include_lora_scale else 1.0
                term = lora_penalty(form, anchor, B, A, s)
            else:
                W, W0, transposed = target
                term = full_penalty(form, anchor, (W - W0).T if transposed else W - W0)
            total = term if total is None else total + term
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.args.world_size > 1 and num_items_in_batch is not None and not self.model_accepts_loss_kwargs:
            # The model averaged over this rank's tokens only (a peft wrapper takes no loss kwargs); weigh it by
            # the rank's share of the batch's tokens, so that DDP's average of the ranks is the batch's mean.
            local = (inputs["labels"][..., 1:] != -100).sum()
            task = task * local * self.args.world_size / num_items_in_batch
        lam = self.args.effective_lambda
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
            task, reg = self._log_acc["task_loss"] / n, self._log_acc["asft_reg"] / n
            if self.args.world_size > 1:  # each rank saw its share of the batch: log the global numbers
                import torch.distributed as dist

                both = torch.tensor([task, reg], dtype=torch.float64)
                dist.all_reduce(both)
                task, reg = float(both[0]) / self.args.world_size, float(both[1]) / self.args.world_size
            logs["task_loss"] = round(task, 6)
            logs["asft_reg"] = round(reg, 6)
            self._log_acc = {"task_loss": 0.0, "asft_reg": 0.0, "n": 0}
        super().log(logs, *args, **kwargs)
