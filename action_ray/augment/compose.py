"""The two composed augmentations of the FT stage: strong (unlabelled) and weak (labelled).

``StrongAugment`` turns the teacher's clean unlabelled batch and its pseudo-labels into the
student's input, in the published order mix → photometric → warp, plus geometric transforms
after them when ``geo_aug`` is on (method.md §4.2, §8.1). ``WeakAugment`` is what the labelled
batch gets: nothing in the published recipe, rot90/flip/rotation with ``geo_aug``.
Both are frozen dataclasses so that a run's config can build them once and save them as data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from action_ray.augment.common import Range, check_range
from action_ray.augment.geometric import random_rot_flip, random_rotation
from action_ray.augment.mix import MIX_KINDS
from action_ray.augment.mix import mix as mix_batch
from action_ray.augment.photometric import brightness_contrast, gaussian_blur
from action_ray.augment.warp import random_smooth_warp

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _check_probability(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.{name} is a probability and must be in [0, 1]; got {value}")


@dataclass(frozen=True)
class GeometricAugment:
    """rot90 + flip (w.p. ``rot_flip_p``), then a rotation in ±``max_degrees`` (w.p.
    ``rotation_p``) and a zoom log-uniform in ``scale_range`` (w.p. ``scale_p``), each decided
    per image; shared by the strong and the weak augmentation. The default ``scale_range``
    (1, 1) is no zoom."""

    rot_flip_p: float = 0.5
    rotation_p: float = 0.5
    max_degrees: float = 20.0
    scale_range: Range = (1.0, 1.0)
    scale_p: float = 0.5

    def __post_init__(self) -> None:
        _check_probability("geometric", "rot_flip_p", self.rot_flip_p)
        _check_probability("geometric", "rotation_p", self.rotation_p)
        _check_probability("geometric", "scale_p", self.scale_p)
        if not 0.0 <= self.max_degrees <= 180.0:
            raise ValueError(f"geometric.max_degrees must be in [0, 180]; got {self.max_degrees}")
        check_range("geometric.scale_range", self.scale_range, positive=True)

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        conf: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        images, labels, conf = random_rot_flip(images, labels, conf, self.rot_flip_p, generator)
        return random_rotation(images, labels, conf, self.max_degrees, self.rotation_p, generator,
                               scale_range=tuple(self.scale_range), scale_p=self.scale_p)


@dataclass(frozen=True)
class StrongAugment:
    """Strong augmentation of the unlabelled student input (FT stage).

    Defaults are the published 2-D recipe (§7) with the §8.1 departures: float photometrics and
    pseudo-labels warped with the images (``warp_labels=False`` restores the published
    behaviour of warping only the images). For z-scored 3-D volumes, the published 3-D recipe is
    ``mix="classmix"``, ``brightness=contrast=(0.98, 1.02)``, ``clamp=None``, ``warp_p=0``.
    """

    mix: str = "cutmix"
    num_classes: int | None = None  # needed by mix="classmix"
    jitter_p: float = 0.5
    brightness: Range = (0.75, 1.25)
    contrast: Range = (0.75, 1.25)
    clamp: Range | None = (0.0, 1.0)
    blur_p: float = 0.5
    blur_sigma: Range = (0.15, 1.15)
    warp_p: float = 0.5
    warp_epsilon: float = 1.5
    warp_grid: int = 32
    warp_steps: int = 8
    warp_labels: bool = True
    geo_aug: bool = False
    geometric: GeometricAugment = GeometricAugment()

    def __post_init__(self) -> None:
        if self.mix not in MIX_KINDS:
            raise ValueError(f"strong_augment.mix must be one of {', '.join(MIX_KINDS)}; "
                             f"got {self.mix!r}")
        if self.mix == "classmix" and (self.num_classes is None or self.num_classes < 1):
            raise ValueError("strong_augment.mix='classmix' needs num_classes >= 1 "
                             f"(got {self.num_classes!r}); set it to the dataset's class count")
        for name in ("jitter_p", "blur_p", "warp_p"):
            _check_probability("strong_augment", name, getattr(self, name))
        check_range("strong_augment.brightness", self.brightness)
        check_range("strong_augment.contrast", self.contrast)
        check_range("strong_augment.blur_sigma", self.blur_sigma, positive=True)
        if self.warp_epsilon < 0 or self.warp_grid < 2 or self.warp_steps < 0:
            raise ValueError(
                "strong_augment warp needs warp_epsilon >= 0, warp_grid >= 2, warp_steps >= 0; "
                f"got {self.warp_epsilon}, {self.warp_grid}, {self.warp_steps}"
            )

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        conf: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """images (B, C, *S) float, labels (B, *S) int, conf (B, *S) float -> the same, new."""
        images, labels, conf = mix_batch(self.mix, images, labels, conf, generator,
                                         num_classes=self.num_classes)
        images = brightness_contrast(images, self.jitter_p, self.brightness, self.contrast,
                                     self.clamp, generator)
        images = gaussian_blur(images, self.blur_p, self.blur_sigma, generator)
        if self.warp_p > 0:
            warped = random_smooth_warp(
                images,
                labels if self.warp_labels else None,
                conf if self.warp_labels else None,
                self.warp_p, self.warp_epsilon, self.warp_grid, self.warp_steps, generator,
            )
            images = warped[0]
            if self.warp_labels:
                labels, conf = warped[1], warped[2]
        if self.geo_aug:
            images, labels, conf = self.geometric(images, labels, conf, generator)
        return images, labels, conf


@dataclass(frozen=True)
class WeakAugment:
    """Augmentation of the labelled batch: identity (published), geometric with ``geo_aug``."""

    geo_aug: bool = False
    geometric: GeometricAugment = GeometricAugment()

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, *S) float, labels (B, *S) int -> the same (unchanged without geo_aug)."""
        if not self.geo_aug:
            return images, labels
        images, labels, _ = self.geometric(images, labels, None, generator)
        return images, labels
