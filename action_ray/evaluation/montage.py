"""A PNG montage of a few cases: image, ground-truth contours and the prediction as an overlay.

Numbers say how good a model is; a picture says *how* it fails (a missing apex slice, a
myocardium ring broken on one side, a tumour split in two). One row per case, one column per
view: the image alone, the image with ground-truth contours and the predicted labels as a
translucent overlay. The slice shown is the middle of the ground truth's foreground extent
(the middle slice when the case has no foreground), so small structures are actually visible.
Matplotlib runs with the Agg backend: no display is needed on a cluster node.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from action_ray.urls import filesystem_for

#: Class colours (RGB, 0-1) cycled for classes 1, 2, ...; background is transparent.
PALETTE = ((0.90, 0.10, 0.10), (0.10, 0.75, 0.20), (0.15, 0.40, 0.95), (0.95, 0.75, 0.10),
           (0.70, 0.20, 0.85), (0.10, 0.80, 0.85))


@dataclass
class MontageCase:
    """One row of the montage: a 2-D slice of image, ground truth and prediction (Y, X)."""

    case_id: str
    z: int
    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    dice: float | None = None


def middle_slice(gt: np.ndarray) -> int:
    """Index of the middle slice of the foreground's z extent in a (Z, Y, X) label map."""
    occupied = np.flatnonzero(np.asarray(gt).reshape(gt.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        return gt.shape[0] // 2
    return int((occupied[0] + occupied[-1]) // 2)


def montage_case(case_id: str, image: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                 dice: float | None = None) -> MontageCase:
    """The montage row of a (Z, Y, X) case: its middle foreground slice."""
    z = middle_slice(gt)
    return MontageCase(case_id, z, np.asarray(image[z], dtype=np.float32), np.asarray(gt[z]), np.asarray(pred[z]), dice)


def _colour_overlay(labels: np.ndarray, alpha: float) -> np.ndarray:
    """(Y, X) labels -> (Y, X, 4) RGBA, background transparent."""
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    for c in np.unique(labels):
        if c == 0:
            continue
        rgba[labels == c] = (*PALETTE[(int(c) - 1) % len(PALETTE)], alpha)
    return rgba


def render_montage(cases: Sequence[MontageCase], classes: Mapping[int, str], title: str = "") -> bytes:
    """PNG bytes of the montage (one row per case: image | GT contours + prediction overlay)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = max(1, len(cases))
    fig, axes = plt.subplots(rows, 2, figsize=(6.0, 3.0 * rows), squeeze=False)
    for row, case in enumerate(cases):
        low, high = np.percentile(case.image, [1, 99]) if case.image.size else (0.0, 1.0)
        for ax in axes[row]:
            ax.imshow(case.image, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
            ax.set_axis_off()
        axes[row][0].set_title(f"{case.case_id}  z={case.z}", fontsize=8)
        ax = axes[row][1]
        ax.imshow(_colour_overlay(case.pred, 0.45))
        for c in classes:
            if c != 0 and np.any(case.gt == c):
                ax.contour((case.gt == c).astype(float), levels=[0.5], linewidths=0.8,
                           colors=[PALETTE[(int(c) - 1) % len(PALETTE)]])
        score = "" if case.dice is None else f"  mean Dice {case.dice:.3f}"
        ax.set_title(f"GT contours, prediction filled{score}", fontsize=8)
    if not cases:
        axes[0][0].text(0.5, 0.5, "no labelled case to show", ha="center", va="center")
        for ax in axes[0]:
            ax.set_axis_off()
    handles = [Patch(color=PALETTE[(int(c) - 1) % len(PALETTE)], label=f"{c} {name}")
               for c, name in sorted(classes.items()) if c != 0]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if handles else 0, 1, 0.97 if title else 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_montage(path_or_url: str, cases: Sequence[MontageCase], classes: Mapping[int, str],
                  title: str = "", storage_options: Mapping[str, Any] | None = None) -> None:
    """Render and write the montage PNG to a local path or URL."""

    fs, path = filesystem_for(path_or_url, storage_options)
    with fs.open(path, "wb") as handle:
        handle.write(render_montage(cases, classes, title))
