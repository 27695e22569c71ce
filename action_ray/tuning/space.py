"""The sweep file: a base training config, a search space over config keys, and Tune settings.

A sweep is data, like a training config, so the same YAML drives a laptop sweep and a cluster
sweep. Layout (every section optional except ``space``)::

    base: cpu-demo                 # training preset, YAML file, or an inline mapping
    overrides:                     # dotted training keys applied on top of the base
      schedule.ft.iterations: 60
    space:                         # one entry per searched key
      method: {grid_search: [supervised, mean_teacher, action]}
      data.label_ratio: {grid_search: [0.05, 0.1]}
      distill.teacher_temperature: {loguniform: [0.005, 0.1]}
      draw:                        # a mapping value sets several keys at once
        grid_search:
          - {train.seed: 0, data.split_seed: 0}
          - {train.seed: 1, data.split_seed: 1}
    tune:
      scheduler: asha              # or fifo
      max_concurrent_trials: 2

Why mapping-valued entries: the paper's table is not a full product (all-labels runs only make
sense for the supervised bound, a labelled-subset "draw" moves two seeds together), and one
``grid_search`` over small mappings says exactly which combinations run. Any entry whose
sampled value is a mapping contributes all its keys; the entry's own name is just a label.

Domains: ``grid_search`` / ``choice`` (lists), ``uniform`` / ``loguniform`` / ``randint``
(``[low, high]``), or a plain value (constant). Grid entries multiply; ``tune.num_samples``
repeats the grid and draws the random ones that many times.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from action_ray.config import (
    Config,
    apply_overrides,
    check_path_name,
    config_from_dict,
    load_config,
    parse_override,
    read_source,
)
from action_ray.errors import ConfigError

#: Domain name in the YAML -> (ray.tune function, what its argument must be).
DOMAINS: dict[str, str] = {
    "grid_search": "list",
    "choice": "list",
    "uniform": "range",
    "loguniform": "range",
    "randint": "range",
}

#: Tune metric every trial reports after each validated FT checkpoint (and at its end).
VALIDATION_METRIC = "val_dice"
#: Tune's time axis for ASHA: FT optimiser steps, comparable across methods (ACTION's P1/P2
#: steps do not count, so pre-training is never judged by a half-trained decoder).
TIME_ATTR = "ft_step"


class TuneSettings(BaseModel):
    """How Tune runs the trials; every key has a default that suits a small CPU machine."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="experiment name; None: sweep-<config file name>")
    storage_path: str = Field("sweeps", description="sweep directories go here (local or s3://)")
    metric: str = VALIDATION_METRIC
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1, description="repeats of the grid / draws of random domains")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="None: as many as fit the cluster's CPUs (GPUs) at once")
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="ASHA: FT steps before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    driver_cpus: float = Field(0.01, gt=0, lt=1, description="CPU of each trial's driver (ray-notes §6)")
    test_split: bool = Field(False, description="also evaluate each finished trial on the test split")
    max_failures: int = Field(0, ge=0, description="Tune-level retries of a failed trial")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        return check_path_name(value, "tune.name")

    @property
    def uses_early_stopping(self) -> bool:
        return self.scheduler == "asha"


class SweepConfig(BaseModel):
    """A parsed sweep file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    base: str | dict[str, Any] = Field("cpu-demo", description="training preset, file or mapping")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted training keys")
    space: dict[str, Any]
    tune: TuneSettings = Field(default_factory=TuneSettings)
    origin: str = Field("sweep", exclude=True)

    @model_validator(mode="after")
    def _domains(self) -> "SweepConfig":
        if not self.space:
            raise ValueError("space is empty: name at least one key to search, e.g. method: {grid_search: [...]}")
        for key, spec in self.space.items():
            check_domain(key, spec)
        return self

    def base_config(self) -> Config:
        """The validated training config every trial starts from (base + overrides)."""
        overrides = [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]
        if isinstance(self.base, str):
            return load_config(self.base, overrides)
        tree = apply_overrides(json.loads(json.dumps(self.base)), overrides)

        return config_from_dict(tree, f"{self.origin}: base")

    def param_space(self) -> dict[str, Any]:
        """``Tuner(param_space=...)``: each entry as its ``ray.tune`` domain."""
        return {key: to_tune_domain(spec) for key, spec in self.space.items()}


def _domain_of(spec: Any) -> tuple[str, Any] | None:
    """``{"choice": [...]}`` -> ("choice", [...]); plain values -> None."""
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DOMAINS:
        name = next(iter(spec))
        return name, spec[name]
    return None


def check_domain(key: str, spec: Any) -> None:
    """Raise ``ValueError`` naming ``space.<key>`` if the domain is malformed."""
    domain = _domain_of(spec)
    if domain is None:
        if isinstance(spec, dict) and any(k in DOMAINS for k in spec):
            raise ValueError(f"space.{key}: a domain mapping has exactly one key, one of {', '.join(DOMAINS)}")
        return
    name, arg = domain
    if DOMAINS[name] == "list":
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"space.{key}.{name} needs a non-empty list of values, got {arg!r}")
        return
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)
            and arg[0] < arg[1]):
        raise ValueError(f"space.{key}.{name} needs [low, high] numbers with low < high, got {arg!r}")
    if name == "loguniform" and arg[0] <= 0:
        raise ValueError(f"space.{key}.loguniform needs low > 0, got {arg!r}")


def to_tune_domain(spec: Any) -> Any:
    """One space entry as a ``ray.tune`` search domain (or the constant itself)."""
    from ray import tune

    domain = _domain_of(spec)
    if domain is None:
        return spec
    name, arg = domain
    if name == "grid_search":
        return tune.grid_search(list(arg))
    if name == "choice":
        return tune.choice(list(arg))
    return getattr(tune, name)(*arg)


# ------------------------------------------------------------------------------ trials
def trial_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled Tune params -> dotted training keys (mapping-valued entries are expanded)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for dotted, v in items:
            if dotted in out and out[dotted] != v:
                raise ConfigError(f"space sets {dotted} twice in one trial ({out[dotted]!r} and {v!r})")
            out[dotted] = v
    return out


def trial_config(base: Mapping[str, Any], params: Mapping[str, Any], **bookkeeping: Any) -> Config:
    """The training config of one trial: ``base`` (a ``Config.to_dict()``) + sampled params.

    ``bookkeeping`` are further dotted keys set last (``train.run_name=...``). Changing
    ``method`` also resets ``stages`` to that method's stages unless the trial sets them.
    """

    overrides = trial_overrides(params)
    overrides.update(bookkeeping)
    tree = json.loads(json.dumps(dict(base)))
    if "method" in overrides and "stages" not in overrides:
        tree["stages"] = None
    texts = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return config_from_dict(apply_overrides(tree, texts), f"trial {json.dumps(trial_overrides(params))}")


def check_trials(sweep: SweepConfig, base: Config) -> list[dict[str, Any]]:
    """Validate every grid combination before any Ray work (random domains at their low end).

    Returns the grid's override sets. A bad value in a grid fails here, naming the trial,
    instead of in one trial's log half an hour into the sweep.
    """
    import itertools

    choices: list[list[tuple[str, Any]]] = []
    for key, spec in sweep.space.items():
        domain = _domain_of(spec)
        if domain is None:
            values = [spec]
        elif DOMAINS[domain[0]] == "list":
            values = list(domain[1])
        else:
            values = [int(domain[1][0]) if domain[0] == "randint" else domain[1][0]]
        choices.append([(key, v) for v in values])
    combos = []
    tree = base.to_dict(redact_secrets=False)
    for combo in itertools.product(*choices):
        params = dict(combo)
        trial_config(tree, params)
        combos.append(trial_overrides(params))
    return combos


# ---------------------------------------------------------------------------------- loading
def parse_sweep_overrides(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """CLI ``KEY=VALUE`` pairs: ``tune.*`` / ``space.*`` / ``base=`` go to the sweep, the rest
    are training keys (added to ``overrides``). Returns (sweep-level tree edits, training keys)."""
    sweep_edits: dict[str, Any] = {}
    training: dict[str, Any] = {}
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] in ("tune", "space", "base"):
            sweep_edits[".".join(parts)] = value
        else:
            training[".".join(parts)] = value
    return sweep_edits, training


def load_sweep(path: str | None, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep file (or a ``tune-*`` preset name) and apply CLI overrides.

    ``space.KEY=VALUE`` replaces (or adds) one search entry; ``tune.KEY=VALUE`` sets a Tune
    setting; any other ``KEY=VALUE`` is a training-config override for every trial.
    """
    if path is None:
        raise ConfigError("tune needs a sweep file: --config FILE or a preset such as tune-cpu")
    tree, origin = read_source(path)
    sweep_edits, training = parse_sweep_overrides(overrides)
    for dotted, value in sweep_edits.items():
        section, _, rest = dotted.partition(".")
        if section == "base":
            tree["base"] = value
        elif not rest:
            raise ConfigError(f"override {dotted}=... must name a key, e.g. {section}.scheduler=fifo")
        else:
            tree.setdefault(section, {})
            if not isinstance(tree[section], dict):
                raise ConfigError(f"{origin}: {section} must be a mapping")
            tree[section][rest] = value
    if training:
        tree["overrides"] = {**(tree.get("overrides") or {}), **training}
    if "space" not in tree:
        raise ConfigError(f"{origin} has no 'space' section; is it a training config? "
                          "(train it with action-ray train --config ...)")
    try:
        sweep = SweepConfig.model_validate({**tree, "origin": origin})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'sweep'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors())
        raise ConfigError(f"{origin}: {problems}") from None
    sweep.origin = origin
    return sweep


def sweep_name(sweep: SweepConfig) -> str:
    """The experiment name: ``tune.name`` or ``sweep-<file or preset name>``."""
    if sweep.tune.name:
        return sweep.tune.name
    stem = os.path.basename(sweep.origin.removeprefix("preset ")).removesuffix(".yaml")
    return f"sweep-{stem}"


def dump_sweep(sweep: SweepConfig) -> str:
    """YAML of the resolved sweep (saved in the sweep directory)."""
    return yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False)
