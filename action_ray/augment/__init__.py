"""Batched, on-device augmentation for ACTION (pure torch, no Ray).

Every op takes a whole batch on any device plus an optional ``torch.Generator`` on that
device, draws all its random parameters there in one call, and has no Python loop over images
and no host sync, so it can sit inside a training step on the worker's GPU. Images are float
throughout (no 8-bit round trip; method.md §8.1).

Modules, one job each:
  ``mix``          cutmix / classmix / cutout of an unlabelled batch with pseudo-labels (§4.2)
  ``photometric``  brightness/contrast jitter, per-image Gaussian blur, pre-training views (§3.1)
  ``warp``         random smooth diffeomorphic warp of images and labels (§4.2, §8.1 fix)
  ``geometric``    rot90/flip and small rotations (``geo_aug``)
  ``compose``      ``StrongAugment`` / ``WeakAugment`` used by the FT stage
"""

from action_ray.augment.compose import GeometricAugment, StrongAugment, WeakAugment
from action_ray.augment.geometric import (
    random_rot_flip,
    random_rotation,
    rot_flip,
    rotate,
)
from action_ray.augment.mix import (
    MIX_KINDS,
    class_mask,
    classmix,
    cutmix,
    cutout,
    mix,
    random_box_mask,
)
from action_ray.augment.photometric import (
    adjust_brightness_contrast,
    blur_with_sigma,
    brightness_contrast,
    gaussian_blur,
    pretrain_views,
)
from action_ray.augment.warp import (
    integrate_velocity,
    random_displacement,
    random_smooth_warp,
    warp_with_displacement,
)

__all__ = [
    "MIX_KINDS",
    "GeometricAugment",
    "StrongAugment",
    "WeakAugment",
    "adjust_brightness_contrast",
    "blur_with_sigma",
    "brightness_contrast",
    "class_mask",
    "classmix",
    "cutmix",
    "cutout",
    "gaussian_blur",
    "integrate_velocity",
    "mix",
    "pretrain_views",
    "random_box_mask",
    "random_displacement",
    "random_rot_flip",
    "random_rotation",
    "random_smooth_warp",
    "rot_flip",
    "rotate",
    "warp_with_displacement",
]
