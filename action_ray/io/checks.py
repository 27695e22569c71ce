"""What makes a scan's intensities usable, checked the same way before storing and before predicting.

A NaN, an Inf or a constant volume does not fail loudly later: it turns the per-case statistics
(and so every normalised slice) into NaN or zeros. Ingest refuses such a case before it reaches
the store, and predict refuses such an input file, with the same message naming the file.
"""

from __future__ import annotations

import numpy as np

from action_ray.errors import CaseError


def check_image(data: np.ndarray, path: str) -> np.ndarray:
    """Finite, non-constant intensities; returns float32 in the axis order given."""
    image = data.astype(np.float32, copy=False)
    finite = np.isfinite(image)
    if not finite.all():
        n_nan = int(np.isnan(image).sum())
        n_inf = int(image.size - finite.sum() - n_nan)
        raise CaseError(f"{path}: image has {n_nan} NaN and {n_inf} Inf voxels; fix or mask them before ingest")
    if image.min() == image.max():
        raise CaseError(f"{path}: image is constant ({float(image.min())}) — an empty or blank volume")
    return image
