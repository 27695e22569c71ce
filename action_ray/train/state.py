"""`TrainState`: everything one worker needs to take the next training step, and to resume it.

A stage step (``action_ray.train.steps``) is a function of a `TrainState`, a batch and the
config section the step reads. The state holds the model container (student, EMA teacher,
heads), the memory banks of the stage, the optimiser and its poly schedule, the step counter and
the random generators, and answers what every stage shares (EMA momentum, stage length, report
cadence). `TrainState.state_dict` captures all of it, RNG states included, so that a run
restored from a checkpoint continues the exact loss trajectory of an uninterrupted one (README,
"Resume").
Nothing here imports Ray.

Random streams, and why there are two:

* ``generator`` (on the training device) draws every augmentation and anatomical-contrast
  sample, so those draws do not depend on how many dropout masks a forward consumed;
* the global torch RNG (CPU, and CUDA on a GPU) drives dropout, which has no generator
  argument. Both are seeded per rank (different draws on every worker, like different data),
  while model weights and bank contents are seeded identically on every rank.

Stage hand-offs follow method.md §1: `handoff_p1_to_p2` keeps both backbones (the
P2 teacher starts from the P1 EMA teacher) and re-initialises heads and banks;
`handoff_p2_to_ft` copies the P2 student into the FT teacher and starts a new representation
head. Each starts a fresh optimiser and schedule.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from action_ray.augment import GeometricAugment, StrongAugment, WeakAugment
from action_ray.bank import ClassPixelBank, MemoryBank
from action_ray.config import Config
from action_ray.distributed import rank as current_rank
from action_ray.distributed import world_size
from action_ray.errors import ConfigError
from action_ray.model import ActionModel, HeadSizes, build_unet, patch_starts
from action_ray.train.optim import build_optimizer, stage_schedule

STATE_FORMAT = 1


@dataclass
class Forwards:
    """The network calls a step makes: eager bound methods, or their ``torch.compile`` versions.

    Kept outside the model so that compiling never changes the model's ``state_dict`` keys.
    The FT representation head is not here: it runs through
    ``steps.representation.fast_representation`` (separable convolution, sparse backward).
    """

    student: Callable
    student_encode: Callable
    teacher: Callable
    teacher_encode: Callable


@dataclass
class TrainState:
    """One worker's training state for one stage of one method; see the module docstring.

    ``step`` counts completed optimiser steps of this stage (the poly schedule's t).
    ``global_bank`` / ``local_bank`` exist in P1 / P2 (local in P2 only); ``pixel_bank`` in FT
    with ``ft.anco_negatives=bank``.
    """

    config: Config
    method: str
    stage: str
    device: torch.device
    model: ActionModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    forwards: Forwards
    strong_augment: StrongAugment
    weak_augment: WeakAugment
    global_bank: MemoryBank | None = None
    local_bank: MemoryBank | None = None
    pixel_bank: ClassPixelBank | None = None
    step: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers for the steps
    @property
    def amp_enabled(self) -> bool:
        """bf16 autocast: on CUDA when ``train.amp`` is set; never on CPU (slow, no benefit)."""
        return bool(self.config.train.amp) and self.device.type == "cuda"

    def autocast(self) -> torch.autocast:
        """The autocast context of a step's forward and losses (a no-op when AMP is off)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp_enabled)

    @property
    def ema_momentum(self) -> float:
        """The teacher's EMA momentum (one value for the whole run)."""
        return self.config.ema_momentum

    @property
    def iterations(self) -> int:
        """Optimiser steps of this stage (``schedule.<stage>.iterations``): ramps are fractions of it."""
        return self.config.stage(self.stage).iterations

    @property
    def report_every(self) -> int:
        """Steps between the loop's reports (``train.report_every``): diagnostics are computed then."""
        return self.config.train.report_every

    @property
    def channels_last(self) -> bool:
        """Whether images go to the network in channels-last memory format (``train.channels_last``)."""
        return bool(self.config.train.channels_last)

    @property
    def local_cut(self) -> tuple[int, int, int]:
        """(cut size, cut stride, pooling) of the local branch's windows (``model`` section)."""
        m = self.config.model
        return m.cut_size, m.cut_stride, m.local_pooling

    def banks(self) -> dict[str, torch.nn.Module]:
        """The banks this stage holds, by name."""
        named = {"global": self.global_bank, "local": self.local_bank, "pixel": self.pixel_bank}
        return {name: bank for name, bank in named.items() if bank is not None}

    # ------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Model, banks, optimiser, schedule, step and every RNG state, as plain tensors/values."""
        rng: dict[str, Any] = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": STATE_FORMAT,
            "method": self.method,
            "stage": self.stage,
            "step": self.step,
            "model": self.model.state_dict(),
            "banks": {name: bank.state_dict() for name, bank in self.banks().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved into a state built for the same method and stage."""
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"checkpoint state format {state.get('format')!r} is not {STATE_FORMAT}")
        if (state["method"], state["stage"]) != (self.method, self.stage):
            raise ConfigError(
                f"checkpoint holds method={state['method']} stage={state['stage']}, but this run "
                f"is method={self.method} stage={self.stage}; build the state for that stage"
            )
        saved_banks, own_banks = set(state["banks"]), set(self.banks())
        if saved_banks != own_banks:
            raise ConfigError(
                f"checkpoint has banks {sorted(saved_banks)} but this config needs {sorted(own_banks)} "
                "(did ft.anco_negatives change?)"
            )
        self.model.load_state_dict(state["model"])
        for name, bank in self.banks().items():
            bank.load_state_dict(state["banks"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


# ------------------------------------------------------------------------------- building
def stream_seed(seed: int, rank: int, purpose: str) -> int:
    """A 63-bit seed per (run seed, rank, purpose), so the streams never coincide."""
    digest = hashlib.sha256(f"{seed}/{rank}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_model(config: Config, num_classes: int) -> ActionModel:
    """Student UNet (preset or widths) + EMA teacher + heads sized by ``config.model``."""
    dims = config.model.dims or config.data.dims
    student = build_unet(config.model.preset_or_widths, num_classes, dims=dims)
    sizes = HeadSizes(**config.model.head_sizes())
    return ActionModel(student, teacher_head=config.distill.teacher_head, **vars(sizes))


def strong_augment_from(config: Config, num_classes: int) -> StrongAugment:
    """`StrongAugment` with the FT settings of ``config`` (2-D published recipe by default)."""
    ft = config.ft
    return StrongAugment(
        mix=ft.mix, num_classes=num_classes, jitter_p=ft.jitter_p, brightness=ft.jitter_range,
        contrast=ft.jitter_range, clamp=(0.0, 1.0) if config.data.dims == 2 else None,
        blur_p=ft.blur_p, blur_sigma=ft.blur_sigma, warp_p=ft.warp_p if config.data.dims == 2 else 0.0,
        warp_epsilon=ft.warp_epsilon, warp_labels=ft.warp_labels, geo_aug=ft.geo_aug,
        geometric=geometric_augment_from(config),
    )


def geometric_augment_from(config: Config) -> GeometricAugment:
    """The rot90/flip/rotation/zoom settings shared by the labelled and unlabelled batches."""
    return GeometricAugment(scale_range=tuple(config.ft.scale_range), scale_p=config.ft.scale_p)


def num_local_patches(config: Config) -> int:
    """P, the number of local windows per training image (36 for 256/64/32 and 64/16/8)."""
    sides = config.data.patch_size if config.data.dims == 3 else (config.data.train_side,) * 2
    count = 1
    for side in sides:
        count *= len(patch_starts(side, config.model.cut_size, config.model.cut_stride, config.data.dims == 3))
    return count


def _banks_for(config: Config, model: ActionModel, stage: str, method: str, num_classes: int) -> dict[str, Any]:
    """Fresh banks of a stage; contents seeded from ``train.seed`` only, so equal on every rank."""
    seed = config.train.seed
    if stage in ("p1", "p2"):
        size = config.distill.resolved_bank_size(config.data.pretrain_batch * world_size())
        banks: dict[str, Any] = {"global_bank": MemoryBank(size, model.global_dim, seed=stream_seed(seed, 0, "bank/global"))}
        if stage == "p2":
            shape = (num_local_patches(config), model.local_dim)
            banks["local_bank"] = MemoryBank(size, shape, seed=stream_seed(seed, 0, "bank/local"))
        return banks
    if method in ("action", "action_ft_only") and config.ft.anco_negatives == "bank":
        dim = config.model.representation_dim
        bank = ClassPixelBank(num_classes, config.ft.anco_bank_size, dim, seed=stream_seed(seed, 0, "bank/pixel"))
        return {"pixel_bank": bank}
    return {}


def _forwards(model: ActionModel, compile_model: bool) -> Forwards:
    calls = Forwards(
        student=model.student.forward,
        student_encode=model.student.encode,
        teacher=model.teacher.forward,
        teacher_encode=model.teacher.encode,
    )
    if compile_model:
        calls = Forwards(**{name: torch.compile(fn, dynamic=False) for name, fn in vars(calls).items()})
    return calls


def _assemble(
    config: Config, model: ActionModel, stage: str, method: str, device: torch.device,
    generator: torch.Generator, num_classes: int,
) -> TrainState:
    """Optimiser, schedule, banks and callables of ``stage`` around an existing model."""
    optimizer = build_optimizer(model, stage, config.stage(stage))
    scheduler = stage_schedule(optimizer, config.stage(stage))
    banks = {name: bank.to(device) for name, bank in _banks_for(config, model, stage, method, num_classes).items()}
    return TrainState(
        config=config, method=method, stage=stage, device=device, model=model,
        optimizer=optimizer, scheduler=scheduler, generator=generator,
        forwards=_forwards(model, config.train.compile),
        strong_augment=strong_augment_from(config, num_classes),
        weak_augment=WeakAugment(geo_aug=config.ft.geo_aug, geometric=geometric_augment_from(config)),
        **banks,
    )


def build_state(
    config: Config, num_classes: int, device: str | torch.device, stage: str, rank: int | None = None
) -> TrainState:
    """A fresh `TrainState` for ``stage`` of ``config.method`` (weights from ``train.seed``).

    Seeds the global torch RNG (model init is identical on every rank), builds the model on
    ``device`` (``channels_last`` when ``train.channels_last``), the stage's optimiser, poly
    schedule and banks, then seeds the per-rank dropout and augmentation streams. To start
    from a previous stage's weights use `handoff_p1_to_p2` / `handoff_p2_to_ft`, or build and
    ``load_state_dict``.
    """
    if stage not in ("p1", "p2", "ft"):
        raise ConfigError(f"stage must be p1, p2 or ft, got {stage!r}")
    if config.method != "action" and stage != "ft":
        raise ConfigError(f"method={config.method} has only the ft stage, not {stage!r}")
    device = torch.device(device)
    rank = current_rank() if rank is None else rank
    seed = config.train.seed
    torch.manual_seed(stream_seed(seed, 0, "init"))
    model = build_model(config, num_classes).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last if config.data.dims == 2 else torch.channels_last_3d)
    torch.manual_seed(stream_seed(seed, rank, "dropout"))
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, rank, "augment"))
    return _assemble(config, model, stage, config.method, device, generator, num_classes)


def _reinitialise(state: TrainState, purpose: str, reset: Callable[[], None]) -> None:
    """Run ``reset`` (which draws from the global torch RNG) under a seed shared by all ranks,
    so every replica gets the same new heads, and leave the per-rank dropout stream untouched."""
    devices = [state.device] if state.device.type == "cuda" else []  # the CPU RNG is always forked
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(stream_seed(state.config.train.seed, 0, purpose))
        reset()


def handoff_p1_to_p2(state: TrainState) -> TrainState:
    """P1 -> P2 (§1): student and EMA-teacher backbones carried; heads, banks,
    optimiser and schedule start afresh (the new heads are identical on every rank)."""
    if state.stage != "p1":
        raise ConfigError(f"handoff_p1_to_p2 needs a P1 state, got stage {state.stage}")
    _reinitialise(state, "heads/p2", state.model.reset_heads)
    return _assemble(state.config, state.model, "p2", state.method, state.device, state.generator,
                     state.model.student.num_classes)


def handoff_p2_to_ft(state: TrainState) -> TrainState:
    """P2 -> FT (§1): the P2 *student* becomes both FT student and FT teacher (the P2 EMA
    teacher is dropped); a new representation head; fresh optimiser (Nesterov) and schedule."""
    if state.stage != "p2":
        raise ConfigError(f"handoff_p2_to_ft needs a P2 state, got stage {state.stage}")
    model = state.model
    # parameters *and* BN statistics, as loading the P2 student checkpoint into the teacher does
    model.teacher.load_state_dict(model.student.state_dict())
    head = model.representation_head

    def reset_head() -> None:
        for layer in head.modules():
            if layer is not head and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    _reinitialise(state, "heads/ft", reset_head)
    return _assemble(state.config, model, "ft", state.method, state.device, state.generator,
                     model.student.num_classes)
