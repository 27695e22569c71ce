"""Named model sizes, so a config says ``model: cpu`` or ``model: paper`` instead of numbers.

``paper`` is the published network (method.md §2.1); ``cpu`` halves every width and shrinks
the heads so that a laptop or CI run of all three stages on 64x64 slices takes seconds per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from action_ray.errors import ConfigError
from action_ray.model.action import ActionModel
from action_ray.model.unet import PAPER_DROPOUT, PAPER_WIDTHS, UNet


@dataclass(frozen=True)
class HeadSizes:
    """Sizes of the projection / predictor / representation heads (method.md §2.2, §7)."""

    global_hidden: int
    global_dim: int
    global_pool: int
    local_pool: int
    representation_dim: int


@dataclass(frozen=True)
class ModelPreset:
    """UNet widths and dropout per level, plus head sizes for 2-D and for 3-D."""

    widths: tuple[int, ...]
    dropout: tuple[float, ...]
    heads_2d: HeadSizes
    heads_3d: HeadSizes

    def heads(self, dims: int) -> HeadSizes:
        return self.heads_2d if dims == 2 else self.heads_3d


MODEL_PRESETS: dict[str, ModelPreset] = {
    # published: 2-D d_g 512 / P 8 / rep 512; 3-D d_g 128 / P 4 / rep 128 (method.md §7)
    "paper": ModelPreset(
        widths=PAPER_WIDTHS,
        dropout=PAPER_DROPOUT,
        heads_2d=HeadSizes(global_hidden=256, global_dim=512, global_pool=1, local_pool=8, representation_dim=512),
        heads_3d=HeadSizes(global_hidden=128, global_dim=128, global_pool=1, local_pool=4, representation_dim=128),
    ),
    # CPU / CI: 64x64 slices with local cut 16, stride 8 -> 36 patches pooled to 4x4
    "cpu": ModelPreset(
        widths=(8, 16, 32, 64, 128),
        dropout=PAPER_DROPOUT,
        heads_2d=HeadSizes(global_hidden=128, global_dim=128, global_pool=1, local_pool=4, representation_dim=64),
        heads_3d=HeadSizes(global_hidden=64, global_dim=64, global_pool=1, local_pool=2, representation_dim=32),
    ),
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


def build_action_model(
    preset: str | ModelPreset,
    num_classes: int,
    dims: int = 2,
    in_channels: int = 1,
    teacher_head: str = "grad",
    heads: HeadSizes | None = None,
) -> ActionModel:
    """Student UNet + EMA teacher + all heads, sized by ``preset`` (heads overridable)."""
    resolved = resolve_preset(preset)
    sizes = heads if heads is not None else resolved.heads(dims)
    student = build_unet(resolved, num_classes, dims=dims, in_channels=in_channels)
    return ActionModel(student, teacher_head=teacher_head, **asdict(sizes))
