"""Whole-case inference: a raw store volume in, a label map (and optionally probabilities) out.

Why one module: evaluation, validation and ``predict`` must feed the network exactly what
training fed it, so the intensity normalisation and the 2-D resize are the functions the
training data path calls (:func:`action_ray.io.normalise.normalise_array`,
:func:`action_ray.data.resize.resize_slices`), called with the run's settings, never re-implemented.

* **2-D** (slice-wise, the ACDC protocol of method.md §6): normalise the case with its stored
  statistics → resize every slice to the training size with the training interpolation →
  student in eval mode → softmax → resize the *probabilities* back to the native grid
  (bilinear) → arg-max. Resizing probabilities instead of arg-max labels (the published code
  resizes labels with nearest neighbour) keeps thin structures such as the myocardium from
  being eroded by a blocky up-sampling.
* **3-D** (sliding window, the LA protocol): the normalised volume is zero-padded (centred) to
  at least the window, windows are taken every ``stride`` plus one flush with the far edge,
  softmax outputs are summed and divided by how many windows covered each voxel, then cropped
  back and arg-maxed.

The network may be any callable mapping ``(B, 1, *S)`` to logits ``(B, C, *S)``, or to an
object with a ``logits`` attribute (the :class:`~action_ray.model.UNetOutput`), so tests can
feed stubs with known outputs. Nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from action_ray.data.patches import patch_origins
from action_ray.data.resize import resize_slices
from action_ray.data.streams import StreamSettings
from action_ray.errors import ConfigError
from action_ray.io.normalise import NormalisationSpec, normalise_array, resolve_spec

if TYPE_CHECKING:
    from action_ray.config import Config

Network = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class InferenceSettings:
    """How a case goes through the network; built from the run config by :func:`inference_settings`.

    dims: 2 (slice-wise) or 3 (sliding window).
    slice_size: 2-D training slice side (slices are resized to ``slice_size``²).
    image_interpolation: the training image resize (``"bicubic"`` or ``"bilinear"``).
    window / stride: 3-D window and stride in store axis order (D, H, W).
    normalisation: the training normalisation spec, already resolved against the store.
    batch_size: slices (2-D) or windows (3-D) per forward pass.
    """

    dims: int
    normalisation: NormalisationSpec
    slice_size: int = 256
    image_interpolation: str = "bicubic"
    window: tuple[int, int, int] | None = None
    stride: tuple[int, int, int] | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ConfigError(f"inference dims must be 2 or 3, got {self.dims!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.dims == 3:
            if self.window is None or self.stride is None or len(self.window) != 3 or len(self.stride) != 3:
                raise ConfigError(
                    f"3-D inference needs eval.window (or data.patch_size) and eval.stride as (D, H, W); "
                    f"got window={self.window}, stride={self.stride}"
                )
            if any(s < 1 or s > w for s, w in zip(self.stride, self.window)):
                raise ConfigError(f"eval.stride={list(self.stride)} must be in [1, window] per axis "
                                  f"(window {list(self.window)})")


@dataclass
class CasePrediction:
    """labels: uint8 (Z, Y, X); probabilities: float32 (C, Z, Y, X) when kept, else None."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def inference_settings(
    config: Config,
    dataset_meta: Mapping[str, Any] | None,
    *,
    batch_size: int | None = None,
    normalisation: Any = None,
) -> InferenceSettings:
    """:class:`InferenceSettings` that reproduce the run's data path on a store's cases.

    The normalisation is the training one: ``data.normalisation`` / ``data.intensity_window``
    when the run set them, else the store's recipe or modality default (``dataset_meta``),
    exactly as :class:`action_ray.data.streams.StreamSettings` resolves it for training.
    ``normalisation`` overrides both (a spec, dict or method name).
    """
    stream = StreamSettings.from_config(config.data)
    spec = resolve_spec(dataset_meta, normalisation if normalisation is not None else stream.normalisation)
    dims = config.model.dims or config.data.dims
    return InferenceSettings(
        dims=dims,
        normalisation=spec,
        slice_size=config.data.slice_size,
        image_interpolation=stream.image_interpolation,
        window=tuple(config.eval_window) if dims == 3 and config.eval_window else None,
        stride=tuple(config.eval.stride) if dims == 3 else None,
        batch_size=int(batch_size or config.eval.batch_size),
    )


def _logits(network: Network, batch: torch.Tensor) -> torch.Tensor:
    out = network(batch)
    return out.logits if hasattr(out, "logits") else out


def _device_of(network: Network) -> torch.device:
    if isinstance(network, torch.nn.Module):
        for tensor in network.parameters():
            return tensor.device
    return torch.device("cpu")


def _argmax_labels(probabilities: torch.Tensor) -> torch.Tensor:
    """(C, ...) probabilities -> uint8 labels (...); ties go to the lower class, like numpy."""
    return probabilities.argmax(dim=0).to(torch.uint8)


# ------------------------------------------------------------------------------------ 2-D
@torch.inference_mode()
def predict_slices(
    network: Network,
    volume: np.ndarray,
    size: int | tuple[int, int],
    *,
    batch_size: int = 8,
    image_interpolation: str = "bicubic",
    keep_probabilities: bool = False,
) -> CasePrediction:
    """Slice-wise 2-D inference of one normalised volume.

    volume: float32 (Z, Y, X), already normalised. Each slice is resized to ``size`` with the
    training interpolation, passed through ``network`` in batches of ``batch_size``, softmaxed,
    and its probabilities resized back to (Y, X) bilinearly before the arg-max.
    Returns labels uint8 (Z, Y, X) and, with ``keep_probabilities``, float32 (C, Z, Y, X).
    """
    if volume.ndim != 3:
        raise ValueError(f"predict_slices: expected a (Z, Y, X) volume, got shape {volume.shape}")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    native = volume.shape[1:]
    device = _device_of(network)
    labels = np.empty(volume.shape, dtype=np.uint8)
    kept: list[np.ndarray] = []
    for start in range(0, volume.shape[0], batch_size):
        block = volume[start:start + batch_size]
        resized, _ = resize_slices(block, None, (height, width), image_interpolation)
        batch = torch.from_numpy(np.ascontiguousarray(resized))[:, None].to(device)
        probs = torch.softmax(_logits(network, batch).float(), dim=1)           # (b, C, H, W)
        if probs.shape[-2:] != native:
            probs = F.interpolate(probs, size=native, mode="bilinear", align_corners=False)
        probs = probs.transpose(0, 1)                                            # (C, b, Y, X)
        labels[start:start + block.shape[0]] = _argmax_labels(probs).cpu().numpy()
        if keep_probabilities:
            kept.append(probs.cpu().numpy())
    probabilities = np.concatenate(kept, axis=1) if keep_probabilities else None
    return CasePrediction(labels, probabilities)


# ------------------------------------------------------------------------------------ 3-D
def centred_padding(shape: Sequence[int], window: Sequence[int]) -> list[tuple[int, int]]:
    """Per-axis (before, after) zero padding that centres ``shape`` in at least ``window``."""
    pads = []
    for have, want in zip(shape, window):
        missing = max(0, int(want) - int(have))
        pads.append((missing // 2, missing - missing // 2))
    return pads


@torch.inference_mode()
def predict_sliding_window(
    network: Network,
    volume: np.ndarray,
    window: Sequence[int],
    stride: Sequence[int],
    *,
    batch_size: int = 4,
    keep_probabilities: bool = False,
) -> CasePrediction:
    """Sliding-window 3-D inference of one normalised volume with overlap averaging.

    volume: float32 (Z, Y, X), already normalised. The volume is zero-padded (centred) on each
    axis shorter than ``window``; windows (D, H, W) start every ``stride`` plus one flush with
    the far edge; softmax outputs are summed per voxel and divided by the number of windows
    covering it. Returns labels uint8 (Z, Y, X) and, with ``keep_probabilities``, float32
    (C, Z, Y, X) cropped back to the input grid.
    """
    if volume.ndim != 3:
        raise ValueError(f"predict_sliding_window: expected a (Z, Y, X) volume, got shape {volume.shape}")
    window = tuple(int(w) for w in window)
    stride = tuple(int(s) for s in stride)
    pads = centred_padding(volume.shape, window)
    padded = np.pad(volume.astype(np.float32, copy=False), pads, mode="constant", constant_values=0.0)
    grid = patch_origins(padded.shape, window, stride)  # the training patch grid
    device = _device_of(network)
    source = torch.from_numpy(padded).to(device)
    total: torch.Tensor | None = None                                            # (C, *padded)
    counts = torch.zeros(padded.shape, dtype=torch.float32, device=device)
    for start in range(0, len(grid), batch_size):
        origins = grid[start:start + batch_size]
        boxes = [tuple(slice(o, o + w) for o, w in zip(origin, window)) for origin in origins]
        batch = torch.stack([source[box] for box in boxes])[:, None]            # (b, 1, D, H, W)
        probs = torch.softmax(_logits(network, batch).float(), dim=1)           # (b, C, D, H, W)
        if total is None:
            total = torch.zeros((probs.shape[1], *padded.shape), dtype=torch.float32, device=device)
        for box, prob in zip(boxes, probs):
            total[(slice(None), *box)] += prob
            counts[box] += 1.0
    assert total is not None  # the grid always has at least one window
    crop = tuple(slice(before, before + n) for (before, _), n in zip(pads, volume.shape))
    probabilities = (total / counts)[(slice(None), *crop)]
    labels = _argmax_labels(probabilities).cpu().numpy()
    return CasePrediction(labels, probabilities.cpu().numpy() if keep_probabilities else None)


# ------------------------------------------------------------------------------- a case
def predict_case(
    network: Network,
    image: np.ndarray,
    stats: Mapping[str, float],
    settings: InferenceSettings,
    *,
    case_id: str = "?",
    keep_probabilities: bool = False,
) -> CasePrediction:
    """Normalise a raw (Z, Y, X) volume with its per-case ``stats`` and run 2-D or 3-D inference.

    ``stats`` are the store's per-case statistics (``CaseInfo.stats``, or
    ``io.normalise.intensity_stats`` of a NIfTI volume), so every slice gets the same
    intensity map as in training.
    """
    normalised = normalise_array(image, settings.normalisation, stats, case_id)
    if settings.dims == 2:
        return predict_slices(network, normalised, settings.slice_size, batch_size=settings.batch_size,
                              image_interpolation=settings.image_interpolation,
                              keep_probabilities=keep_probabilities)
    assert settings.window is not None and settings.stride is not None
    return predict_sliding_window(network, normalised, settings.window, settings.stride,
                                  batch_size=settings.batch_size, keep_probabilities=keep_probabilities)
