"""AsFT: Anchoring Safety in Fine-Tuning (Yang et al., arXiv 2506.08473), on anchors verified by ``landscape``.

Loss L_task + λ‖C⊥ΔW‖² (:mod:`asft.regularizer`); one configuration, :class:`AsftConfig` (``TrainingArguments``
plus AsFT's fields), and :class:`AsftTrainer`, which wraps the model in LoRA itself (:mod:`asft.trainer`);
:func:`fine_tune` from a config to a saved model (:mod:`asft.finetune`); an anchor that refuses to train
without a passing EPL report (:mod:`asft.anchor`); baselines (SFT, Safe LoRA, AsFT_Alt) and Harmful Score /
Fine-tune Accuracy (:mod:`asft.evaluate`).
"""

from landscape._pkg import lazy_exports

_EXPORTS = {
    "AsftConfig": ".config",
    "AsftTrainer": ".trainer",
    "fine_tune": ".finetune",
    "Anchor": ".anchor",
    "load_anchor": ".anchor",
    "verify": ".anchor",
    "FORMS": ".regularizer",
    "lora_penalty": ".regularizer",
    "full_penalty": ".regularizer",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
