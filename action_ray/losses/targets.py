"""The label value that every loss leaves out: `IGNORE_LABEL`.

Label tensors handed to the losses hold class indices in ``[0, C)`` or `IGNORE_LABEL` where a
pixel has no supervision: the unlabelled images of a P1/P2 batch
(``train.steps.common.mask_unlabelled``), cutout boxes (``augment.mix.cutout``) and rows that a
data stream marks as having no label (``data.labels.loss_targets``). It is negative so that it
can never be a class index, and it is what ``F.cross_entropy(..., ignore_index=...)`` gets.
Defined here, once, because the losses, the augmentations and the steps must agree on it.
"""

from __future__ import annotations

#: Label of a pixel without supervision; the ``ignore_index`` of every loss.
IGNORE_LABEL = -1
