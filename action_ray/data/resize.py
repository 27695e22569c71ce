"""Resize a block of slices to the training size in one vectorised call.

The published pipeline resizes every slice to 256 x 256 (image: cubic spline, label: nearest),
ignoring aspect ratio. Here a whole block of slices of one case goes through one
``torch.nn.functional.interpolate`` call instead of a per-slice SciPy loop. Labels use
``nearest-exact`` (pixel-centre sampling, the same convention as ``scipy.ndimage.zoom(order=0)``
for integer factors), so a resize by an integer factor repeats each label exactly.
"""

from __future__ import annotations

import numpy as np

from action_ray.errors import ConfigError

IMAGE_MODES = ("bilinear", "bicubic")


def resize_slices(
    images: np.ndarray,
    labels: np.ndarray | None,
    size: tuple[int, int],
    image_mode: str = "bicubic",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize a stack of 2-D slices.

    images: (n, Y, X) float32 -> (n, H, W) float32 with (H, W) = ``size``.
    labels: (n, Y, X) integer or None -> (n, H, W) same dtype (nearest-exact).
    Returns the inputs unchanged when they already have the target size.
    """
    if image_mode not in IMAGE_MODES:
        raise ConfigError(f"image interpolation {image_mode!r} is not one of {IMAGE_MODES}")
    height, width = int(size[0]), int(size[1])
    if images.shape[-2:] == (height, width):
        return images, labels
    import torch  # here, so read workers that never resize do not pay for importing torch
    import torch.nn.functional as F

    with torch.no_grad():
        image_t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        resized = F.interpolate(image_t, size=(height, width), mode=image_mode, align_corners=False)
        out_images = resized[:, 0].numpy()
        out_labels = None
        if labels is not None:
            label_t = torch.from_numpy(np.ascontiguousarray(labels))[:, None]
            out_labels = F.interpolate(label_t, size=(height, width), mode="nearest-exact")[:, 0].numpy()
    return out_images, out_labels
