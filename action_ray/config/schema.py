"""The config schema: the pydantic models of a run, their defaults and the checks across keys.

Why pydantic with ``extra="forbid"``: a misspelt key in a 30 000-iteration GPU job must fail at
submission, not be ignored. Every default is the published value (method.md §7), except
where §8.1 deliberately departs; those departures are named options
(``distill.local_layout``, ``ft.warp_labels``, ``ft.ema_steps_per_iter``, ``ft.geo_aug``,
``ft.anco_negatives``, ``ft.teacher_eval``). ``distill.teacher_head`` was one; it is back at the
published ``grad`` since the validation protocol chose it (docs/tune.md), ``ema`` stays an option.

Conventions that other modules rely on:

* batch sizes are **per worker**; the global batch is ``num_workers ×`` that.
* ``data.patch_size`` / ``eval.window`` / ``eval.stride`` are in store axis order ``(D, H, W)``,
  i.e. ``(z, y, x)``: the LA patch 112×112×80 (x, y, z) is written ``[80, 112, 112]``.
* two pairs are "one of": ``data.label_ratio`` / ``data.labelled_patients`` and
  ``distill.bank_batches`` / ``distill.bank_size`` (and ``model.preset`` / ``model.widths``).
  Setting one of a pair by override clears the other (:mod:`action_ray.config.load`), so
  ``data.label_ratio=0.1`` works on top of a preset that counts patients.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Literal, Sequence, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from action_ray.config.keys import flatten, is_hash_excluded
from action_ray.urls import is_remote, redact

Stage = Literal["p1", "p2", "ft"]
STAGE_ORDER: tuple[str, ...] = ("p1", "p2", "ft")
Method = Literal["action", "supervised", "mean_teacher", "action_ft_only"]
#: The stages a method trains when ``stages`` is not given.
DEFAULT_STAGES: dict[str, list[str]] = {
    "action": ["p1", "p2", "ft"],
    "supervised": ["ft"],
    "mean_teacher": ["ft"],
    "action_ft_only": ["ft"],
}

#: Batch sizes that are per worker (the global batch is num_workers × each).
PER_WORKER_BATCH_KEYS = ("pretrain_labelled_batch", "pretrain_unlabelled_batch", "ft_labelled_batch",
                         "ft_unlabelled_batch")

#: Characters allowed in a user-given name that becomes one path component (run, sweep).
SAFE_NAME_CHARACTERS = "letters, digits, '.', '_' and '-'"


def check_path_name(value: str | None, key: str) -> str | None:
    """A name that becomes one folder: no separators, no ``..``, not absolute, not hidden.

    Why: ``train.run_name=../../x`` would put a run directory outside ``train.storage_path``.
    """
    if value is None:
        return value
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", value) or ".." in value or len(value) > 200:
        raise ValueError(
            f"{key}={value!r} must be one folder name of {SAFE_NAME_CHARACTERS}, starting with a letter, "
            "digit or '_' (no '/', no '..', at most 200 characters)"
        )
    return value


def _plain_types(annotation: Any) -> set[type]:
    """The scalar types a field annotation admits (``int | None`` -> {int, NoneType})."""
    args = get_args(annotation)
    if get_origin(annotation) is not None and args and get_origin(annotation) not in (list, tuple, dict, Literal):
        return {t for a in args for t in _plain_types(a)}
    return {annotation} if isinstance(annotation, type) else set()


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are re-validated, and
    booleans and numbers do not stand in for each other (``num_workers: true`` is an error,
    not 1; ``deterministic: 1`` is an error, not true)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_number_mixups(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        for name, value in values.items():
            field = cls.model_fields.get(name)
            if field is None or value is None:
                continue
            types = _plain_types(field.annotation)
            if isinstance(value, bool) and types and bool not in types and types & {int, float}:
                raise ValueError(f"{name}: {value!r} is a boolean, but {name} takes a number")
            if bool in types and not isinstance(value, bool) and not types - {bool, type(None)}:
                raise ValueError(f"{name}: {value!r} is not a boolean; write true or false")
        return values


def _one_of(values: Any, section: str, first: str, second: str, default_first: Any) -> Any:
    """Before-validator helper: at most one of two keys; neither given means ``first=default``."""
    if not isinstance(values, dict):
        return values
    a, b = values.get(first), values.get(second)
    if a is not None and b is not None:
        raise ValueError(
            f"set either {section}.{first} or {section}.{second}, not both "
            f"(got {first}={a!r} and {second}={b!r})"
        )
    if a is None and b is None:
        return {**values, first: default_first}
    return values


# --------------------------------------------------------------------------------------- data
class DataConfig(_Section):
    """Where the slices come from, how many patients are labelled, and batch composition."""

    store: str | None = Field(None, description="Zarr volume store URL (local path or s3://…)")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (endpoint_url, …); prefer env credentials"
    )
    label_ratio: float | None = Field(None, gt=0, le=1, description="fraction of train patients labelled")
    labelled_patients: int | None = Field(
        None, ge=1, description="number of labelled train patients (§7: 1; defaults to 1 if no ratio)"
    )
    split_seed: int = Field(0, description="seed of the patient-level labelled/unlabelled split")
    dims: Literal[2, 3] = 2
    slice_size: int = Field(256, ge=16, description="2-D slices are resized to this square (training and evaluation)")
    crop_size: int | None = Field(
        None, ge=16, description="train on random crop_size² windows of the slices (None: whole slices)"
    )
    crop_foreground_p: float = Field(
        0.0, ge=0, le=1, description="chance that a labelled crop is centred on a foreground pixel"
    )
    patch_size: tuple[int, int, int] | None = Field(
        None, description="3-D training patch (D, H, W) = (z, y, x); LA: [80, 112, 112]"
    )
    verify_chunks: bool | None = Field(
        None, description="before training, check that every chunk ingest wrote for the run's train "
                          "(and val) cases is still stored: a deleted chunk reads back as zeros without "
                          "an error. None: on local stores (a directory listing per array); true: on "
                          "s3:// too (a request per array); false: never")
    shuffle_buffer_rows: int = Field(
        256, ge=0, description="rows each worker mixes per stream after the per-epoch block shuffle "
                               "(bigger: batches from more patients, more memory)")
    normalisation: Literal["store", "minmax", "percentile", "zscore", "none"] = Field(
        "store", description="'store' uses the dataset recipe recorded in the store"
    )
    intensity_window: tuple[float, float] | None = Field(
        None, description="clip to [lo, hi] before normalising (CT: e.g. [-125, 275] HU)"
    )
    pretrain_labelled_batch: int = Field(3, ge=1, description="labelled slices per P1/P2 batch (§7)")
    pretrain_unlabelled_batch: int = Field(3, ge=0, description="unlabelled slices per P1/P2 batch")
    ft_labelled_batch: int = Field(4, ge=1, description="labelled slices per FT batch")
    ft_unlabelled_batch: int = Field(4, ge=1, description="unlabelled slices per FT batch")

    @model_validator(mode="before")
    @classmethod
    def _label_amount(cls, values: Any) -> Any:
        return _one_of(values, "data", "labelled_patients", "label_ratio", 1)

    @model_validator(mode="after")
    def _shapes(self) -> "DataConfig":
        if self.slice_size % 16:
            raise ValueError(
                f"data.slice_size={self.slice_size} must be divisible by 16 (four 2× poolings in the UNet)"
            )
        if self.dims == 3:
            if self.patch_size is None:
                raise ValueError("data.dims=3 needs data.patch_size, e.g. [80, 112, 112] (D, H, W)")
            bad = [s for s in self.patch_size if s < 16 or s % 16]
            if bad:
                raise ValueError(
                    f"data.patch_size={list(self.patch_size)}: every side must be a multiple of 16"
                )
        elif self.patch_size is not None:
            raise ValueError("data.patch_size is only used with data.dims=3; remove it or set data.dims=3")
        if self.crop_size is not None:
            if self.dims == 3:
                raise ValueError("data.crop_size crops 2-D slices; 3-D runs train on data.patch_size")
            if self.crop_size % 16 or self.crop_size > self.slice_size:
                raise ValueError(
                    f"data.crop_size={self.crop_size} must be a multiple of 16 and at most "
                    f"data.slice_size={self.slice_size}"
                )
        if self.intensity_window is not None and self.intensity_window[0] >= self.intensity_window[1]:
            raise ValueError(f"data.intensity_window={list(self.intensity_window)} must be [low, high] with low < high")
        return self

    @property
    def train_side(self) -> int:
        """Side of the 2-D training input: the crop when cropping, else the whole slice."""
        return self.crop_size or self.slice_size

    @property
    def pretrain_batch(self) -> int:
        """Slices per P1/P2 batch on one worker (labelled first, as in §7)."""
        return self.pretrain_labelled_batch + self.pretrain_unlabelled_batch


# -------------------------------------------------------------------------------------- model
class ModelConfig(_Section):
    """Network sizes (§2): the UNet preset or explicit widths, and the head dimensions."""

    preset: Literal["paper", "cpu"] | None = Field(None, description="named widths; 'paper' = 16…256")
    widths: tuple[int, ...] | None = Field(None, description="explicit channel widths, 5 levels")
    num_classes: int | None = Field(None, ge=2, description="None: read from the store")
    dims: Literal[2, 3] | None = Field(None, description="None: follows data.dims")
    representation_dim: int = Field(512, ge=1, description="FT pixel representation head output")
    global_hidden: int = Field(256, ge=1, description="hidden width of the global MLP (3-D: 128)")
    global_dim: int = Field(512, ge=1, description="d_g, global embedding size")
    latent_pooling: int = Field(1, ge=1, description="pooling size before the global MLP (1 = GAP)")
    local_pooling: int = Field(8, ge=1, description="P: local patch pooled to P×P (P³ in 3-D)")
    cut_size: int = Field(64, ge=1, description="local patch side (64 in 2-D, 20 in 3-D)")
    cut_stride: int = Field(32, ge=1, description="local patch stride (32 in 2-D, 10 in 3-D)")

    @model_validator(mode="before")
    @classmethod
    def _preset_or_widths(cls, values: Any) -> Any:
        return _one_of(values, "model", "preset", "widths", "paper")

    @model_validator(mode="after")
    def _sizes(self) -> "ModelConfig":
        if self.widths is not None and (len(self.widths) != 5 or min(self.widths) < 1):
            raise ValueError(f"model.widths={list(self.widths)} must be 5 positive channel counts")
        if self.local_pooling > self.cut_size:
            raise ValueError(
                f"model.local_pooling={self.local_pooling} must be <= model.cut_size={self.cut_size}"
            )
        return self

    def head_sizes(self) -> dict[str, int]:
        """Head sizes under the names of ``action_ray.model.HeadSizes`` (``HeadSizes(**…)``).

        ``preset`` / ``widths`` choose the UNet only; the heads always come from these keys, so
        one config file states every size of the run.
        """
        return {
            "global_hidden": self.global_hidden,
            "global_dim": self.global_dim,
            "global_pool": self.latent_pooling,
            "local_pool": self.local_pooling,
            "representation_dim": self.representation_dim,
        }

    @property
    def preset_or_widths(self) -> str | tuple[int, ...]:
        """What ``model.build_unet`` takes: the preset name, or the explicit widths."""
        return self.widths if self.widths is not None else str(self.preset)


# ------------------------------------------------------------------------------------ stages
class StageConfig(_Section):
    """Optimiser and schedule of one stage.

    Published (§3.6): SGD with lr = lr·(1 − t/iterations)^poly_power. ``optimizer=adamw`` with
    ``lr_schedule=onecycle`` (torch's ``OneCycleLR``: warm-up over ``warmup_fraction``, then
    cosine annealing) is the short-run recipe of the CPU quality preset (docs/method.md).
    """

    iterations: int = Field(30000, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr_schedule: Literal["poly", "onecycle"] = "poly"
    warmup_fraction: float = Field(0.1, gt=0, lt=1, description="onecycle: share of steps warming up")
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    nesterov: bool = False
    poly_power: float = Field(0.9, ge=0)

    @model_validator(mode="after")
    def _nesterov(self) -> "StageConfig":
        if self.nesterov and self.momentum == 0:
            raise ValueError(
                "nesterov=true needs momentum > 0 (torch.optim.SGD rejects it); FT uses Nesterov "
                "by default, so set nesterov=false together with momentum=0"
            )
        return self


#: Where a stage's defaults differ from `StageConfig`'s (FT alone uses Nesterov, §4.6). A
#: partial stage block (``ft: {iterations: 100}`` or ``schedule.ft.iterations=5``) is merged
#: onto these, so naming one key never silently resets the others to another stage's values.
STAGE_DEFAULTS: dict[str, dict[str, Any]] = {"p1": {}, "p2": {}, "ft": {"nesterov": True}}


class ScheduleConfig(_Section):
    """Per-stage settings; FT alone uses Nesterov (§4.6)."""

    p1: StageConfig = Field(default_factory=lambda: StageConfig(**STAGE_DEFAULTS["p1"]))
    p2: StageConfig = Field(default_factory=lambda: StageConfig(**STAGE_DEFAULTS["p2"]))
    ft: StageConfig = Field(default_factory=lambda: StageConfig(**STAGE_DEFAULTS["ft"]))

    @model_validator(mode="before")
    @classmethod
    def _merge_stage_defaults(cls, values: Any) -> Any:
        """Fill the keys a stage block leaves out from that stage's defaults, not StageConfig's.

        An empty block (``ft:`` with nothing under it) means "all defaults".
        """
        if not isinstance(values, dict):
            return values
        merged = dict(values)
        for name, defaults in STAGE_DEFAULTS.items():
            if name in merged and merged[name] is None:
                del merged[name]
            elif isinstance(merged.get(name), dict):
                merged[name] = {**defaults, **merged[name]}
        return merged


# ---------------------------------------------------------------------------------- distill
class DistillConfig(_Section):
    """Pre-training (P1/P2) contrastive distillation (§3) and its views (§3.1)."""

    student_temperature: float = Field(0.1, gt=0, description="T_s")
    teacher_temperature: float = Field(0.01, gt=0, description="T_t (ACDC 0.01, LA 0.6)")
    global_weight: float = Field(1.0, ge=0, description="k1, weight of L_glob")
    local_weight: float = Field(1.0, ge=0, description="k2, weight of L_loc (P2 only)")
    bank_batches: int | None = Field(None, ge=1, description="K = bank_batches × global batch (§3.4: 6)")
    bank_size: int | None = Field(None, ge=1, description="explicit K (instead of bank_batches)")
    local_layout: Literal["per_position", "faithful"] = "per_position"
    teacher_head: Literal["ema", "grad"] = "grad"  # published; won the protocol (docs/tune.md)
    shuffle_bn: bool = False
    jitter_range: tuple[float, float] = Field((0.8, 1.2), description="brightness/contrast factors")
    jitter_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = Field((0.15, 1.15), description="teacher-view blur sigma range")
    blur_p: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _bank(cls, values: Any) -> Any:
        return _one_of(values, "distill", "bank_batches", "bank_size", 6)

    def resolved_bank_size(self, global_batch: int) -> int:
        """K for a job whose P1/P2 batch over all workers is ``global_batch`` slices."""
        return self.bank_size if self.bank_size is not None else int(self.bank_batches) * global_batch


# --------------------------------------------------------------------------------------- ft
class FineTuneConfig(_Section):
    """Fine-tuning with pseudo-labels and anatomical contrast (§4)."""

    strong_threshold: float = Field(0.97, gt=0, le=1, description="δ_s")
    weak_threshold: float = Field(0.7, gt=0, le=1, description="δ_w")
    anco_temperature: float = Field(0.5, gt=0, description="τ")
    num_queries: int = Field(256, ge=1)
    num_negatives: int = Field(512, ge=1)
    anco_weight: float = Field(0.01, ge=0)
    unsup_weight: float = Field(1.0, ge=0)
    unsup_rampup: float = Field(
        0.0, ge=0, le=1,
        description="sigmoid ramp-up of the pseudo-label weight over this fraction of FT (0: published, none)",
    )
    anco_negatives: Literal["batch", "bank"] = "batch"
    anco_bank_size: int = Field(2048, ge=1, description="pixel keys per class when anco_negatives=bank")
    mix: Literal["cutmix", "classmix", "cutout"] = "cutmix"
    jitter_range: tuple[float, float] = (0.75, 1.25)
    jitter_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.15, 1.15)
    blur_p: float = Field(0.5, ge=0, le=1)
    warp_p: float = Field(0.5, ge=0, le=1)
    warp_epsilon: float = Field(1.5, ge=0)
    warp_labels: bool = True
    geo_aug: bool = True  # §8.1: rot90 + flip + small rotation (published code: none)
    scale_range: tuple[float, float] = Field(
        (1.0, 1.0),
        description="with geo_aug, zoom factor range (log-uniform; (1, 1): no zoom, the published recipe)",
    )
    scale_p: float = Field(0.5, ge=0, le=1, description="probability of the zoom per image")
    ema_steps_per_iter: Literal[1, 2] = 1
    teacher_eval: bool = False

    @model_validator(mode="after")
    def _thresholds(self) -> "FineTuneConfig":
        if self.weak_threshold > self.strong_threshold:
            raise ValueError(
                f"ft.weak_threshold={self.weak_threshold} must be <= ft.strong_threshold={self.strong_threshold}"
            )
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"ft.scale_range must be [low, high] with 0 < low <= high; got {list(self.scale_range)}")
        return self


class MeanTeacherConfig(_Section):
    """Mean Teacher baseline (§5): MSE on softmax, sigmoid ramp-up of the weight."""

    consistency: float = Field(0.1, ge=0)
    rampup_fraction: float = Field(
        1.0, ge=0, le=1,
        description="ramp over this fraction of FT iterations (SSL4MIS: 200 × 150 = all 30 000)",
    )


# ------------------------------------------------------------------------------------ train
class TrainConfig(_Section):
    """How Ray Train runs the job: workers, devices, checkpoints, fault tolerance."""

    num_workers: int = Field(1, ge=0, description="0 = Ray Train local mode in the driver")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="fractional allowed (0.5 on 2-core CI)")
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each worker also needs, e.g. {a100: 1} to "
                                          "land on nodes started with --resources '{\"a100\": 8}'")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers: PACK fills a node first, SPREAD over nodes, "
                            "STRICT_SPREAD one worker per node")
    gpus_per_worker: float = Field(1.0, ge=0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    seed: int = 1337
    report_every: int = Field(50, ge=1, description="steps between ray.train.report calls")
    checkpoint_every: int = Field(1000, ge=1, description="a multiple of report_every")
    num_to_keep: int | None = Field(2, ge=1)
    max_failures: int = Field(1, ge=-1, description="-1 = retry forever")
    collective_timeout_s: int = Field(1800, ge=1, description="TorchConfig.timeout_s")
    storage_path: str = Field("runs", description="local directory or s3://bucket/prefix")
    run_name: str | None = Field(None, description="None: derived from the config hash")
    resume: bool = Field(False, description="continue the run with this name if it exists")
    init_from: str | None = Field(None, description="checkpoint of the previous stage to start from")
    tracking: Literal["none", "mlflow", "tensorboard"] = Field(
        "none", description="experiment tracking: mlflow (Ray's setup_mlflow) or tensorboard event files")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default file store <storage_path>/mlruns) or TensorBoard "
                          "log folder (default <run>/tensorboard)")
    tracking_experiment: str = Field("action-ray", description="MLflow experiment the runs are logged under")

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, value: str | None) -> str | None:
        return check_path_name(value, "train.run_name")

    @model_validator(mode="after")
    def _devices(self) -> "TrainConfig":
        if self.backend == "nccl" and not self.use_gpu:
            raise ValueError("train.backend=nccl needs train.use_gpu=true (use gloo or auto on CPU)")
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ValueError("train.use_gpu=true needs train.gpus_per_worker > 0")
        if self.checkpoint_every % self.report_every:
            raise ValueError(
                f"train.checkpoint_every={self.checkpoint_every} must be a multiple of "
                f"train.report_every={self.report_every} (checkpoints travel with reports)"
            )
        return self

    @property
    def resolved_backend(self) -> str:
        """``nccl`` on GPU, ``gloo`` on CPU, unless set explicitly."""
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.use_gpu else "gloo"

    @property
    def resolved_storage_path(self) -> str:
        """Ray needs an absolute local path (workers chdir elsewhere); URLs pass unchanged."""
        return self.storage_path if is_remote(self.storage_path) else os.path.abspath(self.storage_path)


class EvalConfig(_Section):
    """Evaluation protocol (§6) and validation during training (§8.1: best-on-val kept too)."""

    split: Literal["val", "test", "train"] = "test"
    val_every: int = Field(
        1000, ge=0,
        description="FT steps between validations on the val split (best/ kept); read on the "
        "train.checkpoint_every grid, last FT step always scored; 0 = never",
    )
    window: tuple[int, int, int] | None = Field(None, description="3-D sliding window; None = data.patch_size")
    stride: tuple[int, int, int] = Field((4, 18, 18), description="3-D sliding-window stride (D, H, W)")
    batch_size: int = Field(8, ge=1, description="slices or windows per inference forward")


# ----------------------------------------------------------------------------------- config
class Config(_Section):
    """The whole run. Sections are attributes: ``cfg.data.slice_size``, ``cfg.ft.num_queries``."""

    method: Method = "action"
    stages: list[Stage] | None = Field(None, description="None: all stages of the method")
    ema_momentum: float = Field(0.99, ge=0, le=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    ft: FineTuneConfig = Field(default_factory=FineTuneConfig)
    mean_teacher: MeanTeacherConfig = Field(default_factory=MeanTeacherConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_stages(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("stages") is None:
            method = values.get("method", "action")
            if method in DEFAULT_STAGES:
                return {**values, "stages": list(DEFAULT_STAGES[method])}
        return values

    @model_validator(mode="after")
    def _cross_section(self) -> "Config":
        stages = list(self.stages or [])
        if not stages:
            raise ValueError("stages must name at least one of p1, p2, ft")
        if stages != [s for s in STAGE_ORDER if s in stages]:
            raise ValueError(f"stages={stages} must be unique and in the order p1, p2, ft")
        if self.method != "action" and stages != ["ft"]:
            raise ValueError(
                f"method={self.method} trains one stage: set stages=[ft] (got stages={stages})"
            )
        if self.model.dims is None:
            self.model.dims = self.data.dims
        elif self.model.dims != self.data.dims:
            raise ValueError(f"model.dims={self.model.dims} differs from data.dims={self.data.dims}")
        sides = self.data.patch_size if self.data.dims == 3 else (self.data.train_side,)
        local_branch = "p2" in stages
        if local_branch and (self.model.cut_size > min(sides)
                             or (self.data.dims == 2 and self.model.cut_size >= min(sides))):
            # 2-D windows start at range(0, side - cut, stride) (published rule): cut must be smaller
            raise ValueError(
                f"model.cut_size={self.model.cut_size} leaves no local window in the training "
                f"{'patch' if self.data.dims == 3 else 'input'} side {min(sides)}; "
                + ("use a smaller model.cut_size" if self.data.dims == 3 else
                   "the 2-D cut must be smaller than data.crop_size (or data.slice_size without crops)")
            )
        if self.data.dims == 2 and self.eval.window is not None:
            raise ValueError("eval.window is the 3-D sliding window; 2-D evaluation goes slice by slice")
        if self.data.dims == 3 and self.eval.window is not None:
            if any(s > w for s, w in zip(self.eval.stride, self.eval.window)):
                raise ValueError(
                    f"eval.stride={list(self.eval.stride)} must not exceed eval.window={list(self.eval.window)}"
                )
        return self

    # ---- derived values the training loop needs
    def stage(self, name: str) -> StageConfig:
        """Optimiser/schedule settings of stage ``name`` (p1, p2 or ft)."""
        return getattr(self.schedule, name)

    @property
    def eval_window(self) -> tuple[int, int, int] | None:
        """3-D sliding window: ``eval.window`` or the training patch."""
        return self.eval.window or self.data.patch_size

    def global_batch_form(self) -> dict[str, Any]:
        """:meth:`to_dict` with every per-worker batch multiplied by the worker count and
        ``train.num_workers`` removed (0, Ray Train's local mode, counts as one worker)."""
        data = self.to_dict()
        workers = max(1, self.train.num_workers)
        for key in PER_WORKER_BATCH_KEYS:
            data["data"][key] = data["data"][key] * workers
        del data["train"]["num_workers"]
        return data

    # ---- persistence
    def to_dict(self, redact_secrets: bool = True) -> dict[str, Any]:
        """Plain JSON-compatible dict; credentials in storage_options masked unless asked not to."""
        data = self.model_dump(mode="json")
        if redact_secrets:
            data["data"]["storage_options"] = redact(data["data"]["storage_options"])
        return data

    def to_yaml(self, redact_secrets: bool = True) -> str:
        """YAML text that :func:`load_config` reads back to an equal config."""
        return yaml.safe_dump(self.to_dict(redact_secrets), sort_keys=False, default_flow_style=None)

    def hash(self) -> str:
        """16 hex digits identifying what the run computes (bookkeeping keys excluded).

        Batch sizes enter as global batches (per-worker batch × workers) and the worker count
        itself does not: 2 workers × 4 slices and 1 worker × 8 slices are the same run, which is
        what lets a run resume on another number of workers (:func:`action_ray.config.load.with_workers`). They are the
        same optimisation problem, not bit for bit the same computation: which rows reach which
        worker, the per-rank batch-norm statistics and the per-rank sampling of anatomical-
        contrast queries and pixel-bank keys (per worker, so their global count scales with the
        workers) all differ.
        """
        flat = {k: v for k, v in flatten(self.global_batch_form()).items() if not is_hash_excluded(k)}
        text = json.dumps(flat, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def pretty(self) -> str:
        """One ``key  value`` line per setting, ``*`` marking values that differ from defaults."""
        flat = flatten(self.to_dict())
        defaults = flatten(Config().to_dict())
        width = max(len(k) for k in flat)
        lines = [f"config {self.hash()}  (* = differs from the paper default)"]
        for key, value in flat.items():
            mark = "*" if defaults.get(key, object()) != value else " "
            lines.append(f"{mark} {key.ljust(width)}  {json.dumps(value)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- keys
def _nested_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The section class of field ``name`` of ``model`` (``Config``, "data" → DataConfig), if any."""
    field = model.model_fields.get(name)
    if field is None:
        return None
    annotation = field.annotation
    candidates = get_args(annotation) if get_origin(annotation) is not None else (annotation,)
    nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return nested[0] if nested else None


def section_model(parts: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class found at a location path (``("schedule", "p1")`` → StageConfig), if any.

    Why: an error about an unknown key is only helpful with the valid keys of the section it
    was written in (:mod:`action_ray.config.explain`).
    """
    model: type[BaseModel] | None = Config
    for part in parts:
        model = _nested_model(model, str(part)) if model is not None else None
    return model


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key, e.g. ``data.slice_size`` (for suggestions and docs)."""
    keys: list[str] = []
    for name in model.model_fields:
        nested = _nested_model(model, name)
        if nested is not None:
            keys.extend(all_keys(nested, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys
