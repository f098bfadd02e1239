"""AsFT: Anchoring Safety in Fine-Tuning (Yang et al., arXiv 2506.08473), on anchors verified by ``landscape``.

Loss L_task + λ‖C⊥ΔW‖² (:mod:`asft.regularizer`), LoRA or full-parameter (:mod:`asft.trainer`), an anchor that
refuses to train without a passing EPL report (:mod:`asft.anchor`), baselines (SFT, Safe LoRA, AsFT_Alt) and
Harmful Score / Fine-tune Accuracy (:mod:`asft.evaluate`).
"""

from .anchor import Anchor, load_anchor, verify
from .regularizer import FORMS, full_penalty, lora_penalty, make_module_anchor

__all__ = ["FORMS", "Anchor", "full_penalty", "load_anchor", "lora_penalty", "make_module_anchor", "verify"]
