"""The ACTION model family in pure PyTorch (no Ray): UNet backbones, heads, EMA teacher."""

from action_ray.model.action import STAGES, TEACHER_HEAD_MODES, ActionModel
from action_ray.model.factory import (
    MODEL_PRESETS,
    HeadSizes,
    ModelPreset,
    build_unet,
    resolve_preset,
)
from action_ray.model.heads import (
    GlobalPredictor,
    GlobalProjection,
    LocalPredictor,
    LocalProjection,
    RepresentationHead,
    embed_local_patches,
    extract_local_patches,
    patch_starts,
    pooled_local_patches,
)
from action_ray.model.teacher import copy_parameters_, ema_buffers_, ema_update_, make_ema_copy
from action_ray.model.unet import UNet, UNet2d, UNet3d, UNetOutput, freeze_decoder

__all__ = [
    "STAGES",
    "TEACHER_HEAD_MODES",
    "ActionModel",
    "MODEL_PRESETS",
    "HeadSizes",
    "ModelPreset",
    "build_unet",
    "resolve_preset",
    "GlobalPredictor",
    "GlobalProjection",
    "LocalPredictor",
    "LocalProjection",
    "RepresentationHead",
    "embed_local_patches",
    "extract_local_patches",
    "patch_starts",
    "pooled_local_patches",
    "copy_parameters_",
    "ema_buffers_",
    "ema_update_",
    "make_ema_copy",
    "UNet",
    "UNet2d",
    "UNet3d",
    "UNetOutput",
    "freeze_decoder",
]
