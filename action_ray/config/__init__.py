"""The typed training configuration: one validated object drives a laptop run and a cluster run.

Sources, in order: the paper's defaults (:mod:`~action_ray.config.schema`), a YAML file or a
packaged preset name such as ``cpu-demo``, ``acdc-2d``, ``la-3d`` (``action_ray/configs/``),
then ``a.b.c=value`` overrides (:mod:`~action_ray.config.load`). A value the schema rejects
becomes a :class:`~action_ray.errors.ConfigError` that names the dotted key, where it came
from and what to write instead (:mod:`~action_ray.config.explain`).

The package has one job per module:

* ``schema`` — the pydantic sections, their defaults and the checks across keys;
* ``keys`` — the flat ``section.key`` view and which keys are special (hash, free-form, pairs);
* ``load`` — reading files and presets, applying overrides, the command-line arguments;
* ``explain`` — turning a pydantic ValidationError into a message a user can act on.

Callers import from here: ``from action_ray.config import Config, load_config``.
"""

from action_ray.config.keys import flatten
from action_ray.config.load import (
    add_config_arguments,
    apply_overrides,
    config_from_args,
    config_from_dict,
    load_config,
    parse_override,
    preset_names,
    read_source,
    with_workers,
)
from action_ray.config.schema import (
    PER_WORKER_BATCH_KEYS,
    STAGE_ORDER,
    Config,
    DataConfig,
    DistillConfig,
    EvalConfig,
    FineTuneConfig,
    MeanTeacherConfig,
    ModelConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
    all_keys,
    check_path_name,
)

__all__ = [
    "PER_WORKER_BATCH_KEYS",
    "STAGE_ORDER",
    "Config",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "FineTuneConfig",
    "MeanTeacherConfig",
    "ModelConfig",
    "ScheduleConfig",
    "StageConfig",
    "TrainConfig",
    "add_config_arguments",
    "all_keys",
    "apply_overrides",
    "check_path_name",
    "config_from_args",
    "config_from_dict",
    "flatten",
    "load_config",
    "parse_override",
    "preset_names",
    "read_source",
    "with_workers",
]
