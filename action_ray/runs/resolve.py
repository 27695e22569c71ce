"""Which checkpoint of a run a choice means, and loading its student for inference.

The run folder's layout is :mod:`action_ray.runs.layout`'s. ``--checkpoint`` choices
(``evaluate``, ``predict``):

* ``last`` (default): the final checkpoint of the run's last stage (``stages/ft`` for every
  method: FT is the stage that is reported, method.md §8.1). An unfinished run falls back to the
  newest periodic checkpoint of that stage, and says so.
* ``best``: what the run recorded as best on the *validation* split (``result.json``'s
  ``best_checkpoint``, else ``<run>/best``), kept during training by
  :mod:`action_ray.runs.best` when ``eval.val_every > 0``. Selection happened during
  training, on validation only; evaluation never selects anything, so the test split cannot
  leak. :func:`checkpoint_selection` says in the summary how the checkpoint was chosen.
* a path or URL: a checkpoint directory (``meta.json`` + ``state.pt``) or another run directory.

Only the student is rebuilt (the network that is evaluated, §6): its weights are the
``student.*`` entries of the saved model state, so no optimiser, bank or head is constructed.

Resuming training needs another choice, :func:`latest_ray_checkpoint`: the periodic checkpoint
Ray Train itself will hand the workers, checked on the driver before any worker starts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from action_ray.config import Config, config_from_dict
from action_ray.errors import ConfigError
from action_ray.model import build_unet
from action_ray.runs.checkpoint import load_checkpoint_from
from action_ray.runs.files import read_json
from action_ray.runs.layout import (
    BEST_RECORD,
    CONFIG_FILE,
    META_FILE,
    RAY_CHECKPOINT_PREFIX,
    RAY_CHECKPOINT_SNAPSHOT,
    RESULT_FILE,
    best_checkpoint,
    join,
    stage_checkpoint,
)
from action_ray.urls import filesystem_for, redact, with_protocol

log = logging.getLogger(__name__)

STUDENT_PREFIX = "student."
#: The output convolution of the UNet decoder: its first weight axis is the class count.
OUTPUT_WEIGHT = "decoder.out_conv.weight"


@dataclass
class LoadedStudent:
    """The network to evaluate plus what describes it.

    network: the student UNet in eval mode on the requested device.
    config: the run config saved in the checkpoint.
    num_classes: output channels of the network (background included).
    checkpoint: URL or path the weights came from; stage / step: where training stood.
    """

    network: torch.nn.Module
    config: Config
    num_classes: int
    checkpoint: str
    stage: str
    step: int

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": redact(self.checkpoint), "stage": self.stage, "step": self.step,
                "method": self.config.method, "num_classes": self.num_classes}


def _is_checkpoint(fs, path: str) -> bool:
    return fs.exists(join(path, META_FILE))


def _last_stage(target: str, storage_options: Mapping[str, Any] | None) -> str:
    """The run's last configured stage (from ``config.yaml``); ``ft`` when it cannot be read."""
    fs, path = filesystem_for(join(target, CONFIG_FILE), storage_options)
    if fs.exists(path):
        import yaml

        with fs.open(path, "r") as handle:
            stages = (yaml.safe_load(handle) or {}).get("stages") or ["ft"]
        return str(stages[-1])
    return "ft"


def _newest_periodic(target: str, storage_options: Mapping[str, Any] | None, stage: str) -> str | None:
    """The Ray checkpoint of ``stage`` with the highest step (a URL like ``target``), or None."""
    fs, root = filesystem_for(target, storage_options)
    best: tuple[int, str] | None = None
    for entry in fs.glob(join(root, f"{RAY_CHECKPOINT_PREFIX}*")):
        meta = read_json(with_protocol(target, join(entry, META_FILE)), storage_options)
        if meta and meta.get("stage") == stage and (best is None or int(meta["step"]) > best[0]):
            best = (int(meta["step"]), entry)
    return with_protocol(target, best[1]) if best else None


def resolve_checkpoint(
    target: str, choice: str = "last", storage_options: Mapping[str, Any] | None = None
) -> str:
    """The checkpoint directory (path or URL) that ``target`` + ``choice`` designate.

    target: a run directory or a checkpoint directory. choice: ``last``, ``best`` or a
    path/URL (then ``target`` only serves as the base of a relative path). Raises
    :class:`ConfigError` that names what was looked for when nothing usable is there.
    """
    if choice not in ("last", "best"):
        path = choice if ("://" in choice or choice.startswith("/")) else join(str(target), choice)
        fs, root = filesystem_for(path, storage_options)
        if not fs.exists(root) and fs.exists(choice):
            path, root = choice, choice
        if _is_checkpoint(fs, root):
            return path
        return resolve_checkpoint(path, "last", storage_options)
    target = str(target).rstrip("/")
    fs, root = filesystem_for(target, storage_options)
    if not fs.exists(root):
        raise ConfigError(f"no run or checkpoint directory at {redact(target)}")
    if _is_checkpoint(fs, root):
        if choice == "best":
            raise ConfigError(f"{redact(target)} is a single checkpoint; --checkpoint best needs a run directory")
        return target
    result = read_json(join(target, RESULT_FILE), storage_options) or {}
    if choice == "best":
        recorded = result.get("best_checkpoint")
        candidates = [recorded] if recorded else []
        candidates.append(best_checkpoint(target))
        for candidate in candidates:
            cfs, croot = filesystem_for(candidate, storage_options)
            if _is_checkpoint(cfs, croot):
                return candidate
        raise ConfigError(
            f"run {redact(target)} kept no best-on-validation checkpoint (looked for result.json "
            "'best_checkpoint' and best/meta.json); train with validation (eval.val_every > 0) "
            "or evaluate --checkpoint last"
        )
    stage = _last_stage(target, storage_options)
    final = stage_checkpoint(target, stage)
    if _is_checkpoint(fs, filesystem_for(final, storage_options)[1]):
        return final
    periodic = _newest_periodic(target, storage_options, stage)
    if periodic is not None:
        log.warning("run %s has no final %s checkpoint yet (unfinished?); using the newest periodic one, %s",
                    redact(target), stage, redact(periodic))
        return periodic
    raise ConfigError(
        f"run {redact(target)} has no {stage} checkpoint (neither stages/{stage}/meta.json nor a "
        f"checkpoint_*/ of stage {stage}); has it trained that stage? Pass --checkpoint PATH to choose one"
    )


def checkpoint_selection(
    checkpoint_url: str, choice: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """How the checkpoint at ``checkpoint_url`` was chosen (``--checkpoint`` = ``choice``).

    For ``best``: the FT step, val Dice and source checkpoint that training recorded in
    ``best/best.json`` (None where a hand-made best/ carries no record).
    """
    if choice == "last":
        return {"choice": "last", "rule": "final checkpoint of the last stage (the reported model)"}
    if choice != "best":
        return {"choice": "path", "rule": "given by --checkpoint"}
    record = read_json(join(checkpoint_url, BEST_RECORD), storage_options) or {}
    return {"choice": "best", "rule": "highest mean Dice on the val split, chosen during training",
            "ft_step": record.get("ft_step"), "val_dice": record.get("val_dice"),
            "source": redact(record["source"]) if record.get("source") else None}


def student_state(model_state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The ``student.*`` entries of an ``ActionModel`` state dict, prefix removed."""
    state = {k[len(STUDENT_PREFIX):]: v for k, v in model_state.items() if k.startswith(STUDENT_PREFIX)}
    if OUTPUT_WEIGHT not in state:
        raise ConfigError(f"checkpoint {redact(where)} holds no student network (no {STUDENT_PREFIX}{OUTPUT_WEIGHT})")
    return state


def load_student(
    checkpoint_url: str, device: str = "cpu", storage_options: Mapping[str, Any] | None = None
) -> LoadedStudent:
    """Rebuild the student UNet of a checkpoint directory (local or remote) in eval mode."""

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    checkpoint = load_checkpoint_from(checkpoint_url, storage_options)
    config = config_from_dict(checkpoint.config, f"{redact(checkpoint_url)} config")
    state = student_state(checkpoint.train_state["model"], checkpoint_url)
    num_classes = int(state[OUTPUT_WEIGHT].shape[0])
    dims = config.model.dims or config.data.dims
    network = build_unet(config.model.preset_or_widths, num_classes, dims=dims)
    network.load_state_dict(state)
    network.to(device).eval()
    return LoadedStudent(network, config, num_classes, checkpoint_url, checkpoint.stage, int(checkpoint.step))


def latest_ray_checkpoint(run_dir: str) -> str | None:
    """The ``checkpoint_*`` folder Ray Train will resume from, if any.

    That is the one Ray's own ``checkpoint_manager_snapshot.json`` names as its latest: Ray
    writes the snapshot only after a checkpoint's upload has finished, so a folder that a
    killed driver left half-copied (its ``meta.json`` may arrive before its weights) is never
    it. No snapshot, or one that names no checkpoint: None.
    """
    fs, root = filesystem_for(run_dir)
    named = _snapshot_latest_checkpoint(fs, root)  # None without a snapshot: Ray starts afresh
    # the folder Ray will load, even if damaged (then the preflight check names it); a snapshot
    # that names none is Ray's to report, and no half-copied newer folder is ever guessed at
    return None if named is None else join(run_dir, named)


def _snapshot_latest_checkpoint(fs: Any, root: str) -> str | None:
    """``latest_checkpoint_result.checkpoint_dir_name`` of Ray's snapshot, or None when the
    snapshot is missing, unreadable or names no checkpoint (older Ray layouts)."""
    try:
        with fs.open(join(root, RAY_CHECKPOINT_SNAPSHOT), "r") as handle:
            snapshot = json.load(handle)
    except (OSError, ValueError):
        return None
    latest = snapshot.get("latest_checkpoint_result") if isinstance(snapshot, dict) else None
    name = latest.get("checkpoint_dir_name") if isinstance(latest, dict) else None
    return name if isinstance(name, str) and name.startswith(RAY_CHECKPOINT_PREFIX) else None
