"""`ActionModel`: every network of one ACTION run in one module, so that one `state_dict`
checkpoints it and one call says what a stage trains.

Contents (method.md §2.2, §2.3, §8.1):

* ``student`` / ``teacher``: two UNets; the teacher is an EMA of the student, never trained;
* ``global_q`` -> ``global_predictor`` (student) and ``global_k`` (teacher) on the bottleneck;
* ``local_q`` -> ``local_predictor`` (student) and ``local_k`` (teacher) on logit patches;
* ``representation_head`` on the concatenated decoder features (FT).

``teacher_head`` chooses how the teacher's k-heads learn:

* ``"grad"`` (default, the published 2-D code): k-heads are separately initialised, trainable,
  and learn only through the (non-detached) KL target; no EMA. It won the validation protocol
  (docs/tune.md, "Choosing the defaults") on every draw;
* ``"ema"``: k-heads start as copies of the q-heads and follow them by EMA with the backbone;
  they are frozen and the distillation target is detached (ISD design). Kept as an option.

The memory banks are separate modules (`action_ray.bank`), because their size depends on the
global batch, not on the model.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from action_ray.model.heads import (
    GlobalPredictor,
    GlobalProjection,
    LocalPredictor,
    LocalProjection,
    RepresentationHead,
)
from action_ray.model.teacher import copy_parameters_, ema_update_, make_ema_copy
from action_ray.model.unet import UNet, freeze_decoder

Stage = Literal["p1", "p2", "ft"]
STAGES: tuple[str, ...] = ("p1", "p2", "ft")
TEACHER_HEAD_MODES: tuple[str, ...] = ("ema", "grad")


class ActionModel(nn.Module):
    """Student, EMA teacher and all heads of ACTION; see the module docstring.

    Sizes: ``global_q`` maps the bottleneck (``student.widths[-1]`` channels) to ``global_dim``
    through ``global_hidden``; the local heads work on ``num_classes`` channels pooled to
    ``local_pool`` per axis (D_l = C * local_pool^dims); the representation head maps
    ``sum(widths)`` channels to ``representation_dim`` per pixel.
    """

    def __init__(
        self,
        student: UNet,
        *,
        global_hidden: int = 256,
        global_dim: int = 512,
        global_pool: int = 1,
        local_pool: int = 8,
        representation_dim: int = 512,
        teacher_head: str = "grad",
    ) -> None:
        super().__init__()
        if teacher_head not in TEACHER_HEAD_MODES:
            raise ValueError(f"teacher_head must be one of {TEACHER_HEAD_MODES}, got {teacher_head!r}")
        dims, classes = student.dims, student.num_classes
        self.dims = dims
        self.teacher_head = teacher_head
        self.student = student
        self.teacher = make_ema_copy(student)
        self.global_q = GlobalProjection(student.widths[-1], global_hidden, global_dim, global_pool, dims)
        self.global_predictor = GlobalPredictor(global_dim)
        self.local_q = LocalProjection(classes, local_pool, dims)
        self.local_predictor = LocalPredictor(classes, dims)
        if teacher_head == "ema":
            self.global_k = make_ema_copy(self.global_q)
            self.local_k = make_ema_copy(self.local_q)
        else:
            self.global_k = GlobalProjection(student.widths[-1], global_hidden, global_dim, global_pool, dims)
            self.local_k = LocalProjection(classes, local_pool, dims)
        self.representation_head = RepresentationHead(student.feature_channels, representation_dim, dims)

    @property
    def local_dim(self) -> int:
        """D_l: length of one flattened local patch embedding."""
        return self.student.num_classes * self.local_q.pool.output_size ** self.dims

    @property
    def global_dim(self) -> int:
        """d_g: length of one global embedding."""
        return self.global_q.fc2.out_features

    @torch.no_grad()
    def update_teacher(self, momentum: float = 0.99) -> None:
        """One EMA step of the teacher backbone (and, with ``teacher_head="ema"``, the k-heads)."""
        ema_update_(self.teacher, self.student, momentum)
        if self.teacher_head == "ema":
            ema_update_(self.global_k, self.global_q, momentum)
            ema_update_(self.local_k, self.local_q, momentum)

    @torch.no_grad()
    def reset_heads(self) -> None:
        """Re-initialise every head (P1 -> P2 hand-off: heads are not carried over, §1).

        Uses the global torch RNG; with ``teacher_head="ema"`` the k-heads restart as copies of
        the new q-heads.
        """
        for head in self._heads():
            for layer in head.modules():
                if layer is not head and hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        if self.teacher_head == "ema":
            copy_parameters_(self.global_k, self.global_q)
            copy_parameters_(self.local_k, self.local_q)

    def _heads(self) -> list[nn.Module]:
        return [
            self.global_q,
            self.global_predictor,
            self.global_k,
            self.local_q,
            self.local_predictor,
            self.local_k,
            self.representation_head,
        ]

    def param_groups(self, stage: Stage) -> list[dict]:
        """Set ``requires_grad`` for ``stage`` and return its optimizer parameter groups.

        * ``"p1"``: student encoder (decoder frozen) + global q-head and predictor;
        * ``"p2"``: whole student + global and local q-heads and predictors;
        * ``"ft"``: whole student + representation head.

        With ``teacher_head="grad"`` the k-heads of the stage's branches are trainable too.
        Returns ``[{"name": "student", "params": [...]}, {"name": "heads", "params": [...]}]``
        (the extra ``name`` key is kept by torch optimizers), ready for ``torch.optim.SGD``.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.student.requires_grad_(True)
        if stage == "p1":
            freeze_decoder(self.student)
        heads: list[nn.Module]
        if stage == "ft":
            heads = [self.representation_head]
        else:
            heads = [self.global_q, self.global_predictor]
            if self.teacher_head == "grad":
                heads.append(self.global_k)
            if stage == "p2":
                heads += [self.local_q, self.local_predictor]
                if self.teacher_head == "grad":
                    heads.append(self.local_k)
        for head in heads:
            head.requires_grad_(True)
        return [
            {"name": "student", "params": [p for p in self.student.parameters() if p.requires_grad]},
            {"name": "heads", "params": [p for head in heads for p in head.parameters()]},
        ]

    def forward(self, *args, **kwargs):  # pragma: no cover - guidance only
        raise TypeError(
            "ActionModel is a container; call its parts (model.student(x), model.global_q(...)) "
            "from the stage step functions"
        )
