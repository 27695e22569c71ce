"""Fixed random batches of a stage's shape, for benchmarks that time steps without a store."""

from __future__ import annotations

from typing import Any


def synthetic_batch(config: Any, stage: str) -> dict:
    """A fixed random batch of the stage's shape (labels in 0..3)."""
    import torch

    size, g = config.data.train_side, torch.Generator().manual_seed(0)
    if stage == "p2":
        n = config.data.pretrain_batch
        return {"image": torch.rand((n, 1, size, size), generator=g),
                "label": torch.randint(0, 4, (n, size, size), generator=g),
                "labelled": torch.arange(n) < config.data.pretrain_labelled_batch}
    nl, nu = config.data.ft_labelled_batch, config.data.ft_unlabelled_batch
    return {"image_l": torch.rand((nl, 1, size, size), generator=g),
            "label_l": torch.randint(0, 4, (nl, size, size), generator=g),
            "image_u": torch.rand((nu, 1, size, size), generator=g)}
