"""How a label stream says "no label here", and the one place that turns it into `IGNORE_LABEL`.

The label column of a ``VolumeSliceDatasource`` is uint8, the dtype labels are stored in, and a
uint8 cannot hold the losses' `IGNORE_LABEL` (-1). A datasource that has a label column but
reads a case without a label (``with_label=True`` over an unlabelled case) therefore fills the
rows of that case with `NO_LABEL_UINT8` (255), so that every block keeps the same uint8 column.
The value lives only in the stream: nothing is stored with it (an unlabelled case has no label
array in the store), and recipes and ingest refuse a class index above
``store.schema.MAX_CLASS_INDEX`` (254), so no stored class can be mistaken for it.

`loss_targets` is the only conversion from stream labels to loss targets: int64, with
`NO_LABEL_UINT8` replaced by `IGNORE_LABEL`. The training loop applies it to every labelled batch
(``train.loop.compose_batch``). The labelled training stream holds labelled cases only
(``data.splits``), so the value does not normally arrive there; converting it anyway means that a
stray row without a label is ignored by the losses instead of reaching a cross-entropy as the
out-of-range class 255.
"""

from __future__ import annotations

import torch

from action_ray.losses.targets import IGNORE_LABEL
from action_ray.store.schema import NO_LABEL_UINT8

__all__ = ["NO_LABEL_UINT8", "loss_targets"]


def loss_targets(stream_labels: torch.Tensor) -> torch.Tensor:
    """Labels of a stream batch as loss targets: int64 class indices, `IGNORE_LABEL` where the
    stream said `NO_LABEL_UINT8`."""
    return stream_labels.long().masked_fill(stream_labels == NO_LABEL_UINT8, IGNORE_LABEL)
