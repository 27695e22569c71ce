"""The data path from a volume store to Ray Train workers.

* :mod:`~action_ray.data.splits` — labelled / unlabelled patients for a label ratio (pure Python).
* :mod:`~action_ray.data.resize` — the vectorised resize to the training size (intensity
  normalisation, shared with ingest and inference, is :mod:`action_ray.io.normalise`).
* :mod:`~action_ray.data.patches` — the 3-D patch-origin grid (shared with sliding-window inference).
* :mod:`~action_ray.data.labels` — the uint8 "no label" value of label streams and its conversion
  to the losses' ``IGNORE_LABEL`` (``loss_targets``).
* :mod:`~action_ray.data.source` — ``VolumeSliceDatasource``, a Ray Data source of slices/patches.
* :mod:`~action_ray.data.streams` — ``build_streams``: the labelled and unlabelled training
  Datasets of a run (evaluation reads whole volumes from the store, not a stream).

Only the light modules are imported here; ``source`` and ``streams`` import Ray when used.
"""

from action_ray.data.splits import LabelSplit, label_split, split_cases

__all__ = ["LabelSplit", "label_split", "split_cases"]
