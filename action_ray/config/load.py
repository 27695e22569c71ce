"""Loading a config: defaults ← a YAML file or packaged preset ← ``a.b.c=value`` overrides.

Override values are parsed as YAML scalars (``3``, ``0.5``, ``true``, ``[p1, ft]``, ``null``);
YAML booleans are strict (``yes`` stays a string). Setting one key of an exclusive pair
(:data:`~action_ray.config.keys.EXCLUSIVE_PAIRS`) by override clears the other, so an override
can switch a preset from counting labelled patients to a label ratio. Every verb that trains
takes the same ``--config`` and trailing overrides (:func:`add_config_arguments`).
"""

from __future__ import annotations

import argparse
import os
import re
from importlib import resources
from typing import Any, Mapping, Sequence

import yaml
from pydantic import ValidationError

from action_ray.config.explain import explain_validation_error
from action_ray.config.keys import EXCLUSIVE_PAIRS
from action_ray.config.schema import PER_WORKER_BATCH_KEYS, Config
from action_ray.errors import ConfigError
from action_ray.urls import filesystem_for, is_remote, redact


def preset_names() -> list[str]:
    """Names of the presets shipped in ``action_ray/configs/``."""
    folder = resources.files("action_ray.configs")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_source(path: str) -> tuple[dict[str, Any], str]:
    """Load the YAML mapping of a file, URL or preset name; returns (mapping, where it came from).

    Why public: a sweep file (:mod:`action_ray.tuning.space`) is found and read the same way as
    a run config (local path, URL or packaged preset), and its errors name it the same way;
    the returned origin is what error messages cite (``preset cpu-demo`` or the path).
    """
    if os.path.isfile(path) or is_remote(path):
        try:
            fs, fs_path = filesystem_for(path)
            with fs.open(fs_path, "r") as handle:
                text = handle.read()
        except (OSError, FileNotFoundError) as exc:
            raise ConfigError(f"cannot read config file {redact(path)}: {exc}") from exc
        origin = path
    else:
        name = path[:-5] if path.endswith(".yaml") else path
        if os.sep in path or name not in preset_names():
            raise ConfigError(
                f"config {path!r} is neither a file nor a preset; presets: {', '.join(preset_names())}"
            )
        text = resources.files("action_ray.configs").joinpath(f"{name}.yaml").read_text()
        origin = f"preset {name}"
    try:
        loaded = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}, origin
    if not isinstance(loaded, dict):
        raise ConfigError(f"{origin} must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded, origin


class StrictBoolLoader(yaml.SafeLoader):
    """YAML without the 1.1 booleans: only ``true``/``false`` are booleans; ``yes``, ``no``,
    ``on``, ``off`` stay strings (so a boolean key given ``yes`` is an error, not a guess)."""


StrictBoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictBoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with strict booleans (:class:`StrictBoolLoader`)."""
    return yaml.load(text, Loader=StrictBoolLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"ft.num_queries=64"`` → ``(["ft", "num_queries"], 64)``; the value is a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value, e.g. train.num_workers=2")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not a YAML scalar or list ({exc})") from exc
    return parts, value


def _set_dotted(tree: dict[str, Any], parts: Sequence[str], value: Any, origin: str) -> None:
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"{origin}: {where} is a value, not a section, so {'.'.join(parts)} cannot be set")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw mapping; one key of an exclusive pair clears the other."""
    given: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        dotted = ".".join(parts)
        _set_dotted(tree, parts, value, f"override {text!r}")
        if value is None:
            continue
        given[dotted] = text
        for first, second in EXCLUSIVE_PAIRS:
            partner = second if dotted == first else first if dotted == second else None
            if partner is None:
                continue
            if partner in given:
                raise ConfigError(f"overrides {given[partner]!r} and {text!r} conflict: set only one of them")
            _set_dotted(tree, partner.split("."), None, f"override {text!r}")
    return tree


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults ← YAML file or preset name ← overrides, validated into a :class:`Config`.

    Raises :class:`ConfigError` naming the dotted key: unknown keys get the closest valid key
    suggested; bad values get the value and the constraint.
    """
    tree, origin = read_source(path) if path else ({}, "defaults")
    override_keys = {".".join(parse_override(o)[0]) for o in overrides}
    tree = apply_overrides(tree, overrides)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc, origin, override_keys)) from None


def config_from_dict(tree: Mapping[str, Any], origin: str = "config") -> Config:
    """Validate a raw mapping (e.g. a Tune trial's ``train_loop_config``) with friendly errors."""
    try:
        return Config.model_validate(dict(tree))
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc, origin, set())) from None


def with_workers(config: Config, num_workers: int, like: Config | None = None) -> Config:
    """``config`` on ``num_workers`` workers with the global batches of ``like`` (default:
    ``config``'s own): each per-worker batch becomes global / ``num_workers``.

    Raises a ConfigError naming the batch that does not divide, since a run must not change
    its global batch silently.
    """
    source = like or config
    old_workers = max(1, source.train.num_workers)
    new_workers = max(1, num_workers)
    changes: dict[str, int] = {}
    for key in PER_WORKER_BATCH_KEYS:
        total = getattr(source.data, key) * old_workers
        if total % new_workers:
            raise ConfigError(
                f"data.{key}: the global batch of {total} slices ({old_workers} worker(s) × "
                f"{getattr(source.data, key)}) cannot be split evenly over {num_workers} workers; use a "
                f"worker count that divides {total}")
        changes[key] = total // new_workers
    data = config.to_dict(redact_secrets=False)
    data["data"].update(changes)
    data["train"]["num_workers"] = num_workers
    return config_from_dict(data, "with_workers")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The same two arguments on every verb that trains: ``--config`` and trailing overrides."""
    parser.add_argument(
        "--config", default=None, metavar="FILE|PRESET",
        help=f"YAML file or preset ({', '.join(preset_names())}); defaults are the paper's values",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="config overrides such as data.store=s3://bucket/acdc.zarr train.num_workers=2",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """:func:`load_config` from the arguments added by :func:`add_config_arguments`."""
    return load_config(args.config, list(args.overrides or ()))
