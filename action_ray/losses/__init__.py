"""The ACTION losses as pure functions of tensors (no Ray, no hidden state, no host sync).

Paper name -> function:

* L_sup   -> :func:`supervised_loss` (0.5 * (CE + Dice)), :func:`dice_loss`
* L_glob  -> :func:`global_distillation_loss`
* L_loc   -> :func:`local_distillation_loss` (+ :func:`local_bank_entries` for the enqueue)
* L_unsup -> :func:`pseudo_label_loss`
* L_anco  -> :func:`anatomical_contrast_loss`
* Mean Teacher baseline -> :func:`mean_teacher_consistency`, :func:`sigmoid_rampup`

Label pixels without supervision carry :data:`IGNORE_LABEL` (``losses.targets``).
"""

from .anatomical_contrast import ClassKeyBank, ContrastSamples, anatomical_contrast_loss
from .consistency import mean_teacher_consistency, sigmoid_rampup
from .distillation import (
    LOCAL_LAYOUTS,
    global_distillation_loss,
    local_bank_entries,
    local_distillation_loss,
    similarity_log_probs,
)
from .pseudo_label import pseudo_label_loss
from .segmentation import dice_loss, supervised_loss
from .targets import IGNORE_LABEL

__all__ = [
    "IGNORE_LABEL",
    "ClassKeyBank",
    "ContrastSamples",
    "LOCAL_LAYOUTS",
    "anatomical_contrast_loss",
    "dice_loss",
    "global_distillation_loss",
    "local_bank_entries",
    "local_distillation_loss",
    "mean_teacher_consistency",
    "pseudo_label_loss",
    "sigmoid_rampup",
    "similarity_log_probs",
    "supervised_loss",
]
