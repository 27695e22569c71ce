"""Named UNet sizes, so a config says ``model: cpu`` or ``model: paper`` instead of numbers.

``paper`` is the published network (method.md §2.1); ``cpu`` halves every width so that a
laptop or CI run of all three stages on 64x64 slices takes seconds per step. A preset sizes the
UNet only: the head sizes always come from the run config (``ModelConfig.head_sizes``), and
``action_ray.train.state.build_model`` assembles the `ActionModel` from both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from action_ray.errors import ConfigError
from action_ray.model.unet import PAPER_DROPOUT, PAPER_WIDTHS, UNet


@dataclass(frozen=True)
class HeadSizes:
    """Sizes of the projection / predictor / representation heads (method.md §2.2, §7), under
    the keyword names of `ActionModel`, so ``ActionModel(student, **vars(sizes))`` builds them."""

    global_hidden: int
    global_dim: int
    global_pool: int
    local_pool: int
    representation_dim: int


@dataclass(frozen=True)
class ModelPreset:
    """UNet widths and dropout per level."""

    widths: tuple[int, ...]
    dropout: tuple[float, ...]


MODEL_PRESETS: dict[str, ModelPreset] = {
    "paper": ModelPreset(widths=PAPER_WIDTHS, dropout=PAPER_DROPOUT),
    "cpu": ModelPreset(widths=(8, 16, 32, 64, 128), dropout=PAPER_DROPOUT),
}


def resolve_preset(preset: str | ModelPreset) -> ModelPreset:
    """A preset object from its name; an unknown name raises ConfigError listing the choices."""
    if isinstance(preset, ModelPreset):
        return preset
    try:
        return MODEL_PRESETS[preset]
    except KeyError:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {sorted(MODEL_PRESETS)}") from None


def build_unet(
    preset_or_widths: str | ModelPreset | Sequence[int],
    num_classes: int,
    dims: int = 2,
    in_channels: int = 1,
    dropout: Sequence[float] | None = None,
) -> UNet:
    """A 2-D or 3-D UNet from a preset name/object or an explicit width tuple.

    With explicit widths, ``dropout`` defaults to the paper's per-level values when there are
    five levels; other depths must pass ``dropout``.
    """
    if isinstance(preset_or_widths, (str, ModelPreset)):
        preset = resolve_preset(preset_or_widths)
        widths, dropout = preset.widths, dropout if dropout is not None else preset.dropout
    else:
        widths = tuple(int(w) for w in preset_or_widths)
        if dropout is None:
            if len(widths) != len(PAPER_DROPOUT):
                raise ValueError(f"widths {widths} have {len(widths)} levels; pass dropout with one value per level")
            dropout = PAPER_DROPOUT
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    return UNet(in_channels, num_classes, widths, tuple(dropout), dims=dims)

