"""Find the checkpoint to evaluate in a run directory and load its student for inference.

Run directory layout (written by ``action_ray.train``; local or ``s3://``)::

    <run>/config.yaml, label_split.json, metrics.jsonl, result.json (when finished)
    <run>/stages/<stage>/{state.pt, meta.json}    final checkpoint of each stage
    <run>/best/{state.pt, meta.json, best.json}   best-on-*validation* checkpoint, if kept
    <run>/checkpoint_*/{state.pt, meta.json}      Ray Train's periodic checkpoints

``--checkpoint`` choices:

* ``last`` (default): the final checkpoint of the run's last stage (``stages/ft`` for every
  method: FT is the stage that is reported, method.md §8.1). An unfinished run falls back to the
  newest periodic checkpoint of that stage, and says so.
* ``best``: what the run recorded as best on the *validation* split (``result.json``'s
  ``best_checkpoint``, else ``<run>/best``), kept during training by
  ``action_ray.train.validation`` when ``eval.val_every > 0``. Selection happened during
  training, on validation only; evaluation never selects anything, so the test split cannot
  leak. :func:`checkpoint_selection` says in the summary how the checkpoint was chosen.
* a path or URL: a checkpoint directory (``meta.json`` + ``state.pt``) or another run directory.

Only the student is rebuilt (the network that is evaluated, §6): its weights are the
``student.*`` entries of the saved model state, so no optimiser, bank or head is constructed.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from action_ray.config import Config, config_from_dict
from action_ray.errors import ConfigError
from action_ray.urls import filesystem_for, is_remote, redact

log = logging.getLogger(__name__)

META_FILE = "meta.json"
#: Inside ``<run>/best/`` (and copied to ``<run>/best.json``): ft_step, val_dice, source of the best.
BEST_RECORD = "best.json"
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


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _is_checkpoint(fs, path: str) -> bool:
    return fs.exists(_join(path, META_FILE))


def _read_json(fs, path: str) -> dict | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return json.load(handle)


def _last_stage(fs, root: str) -> str:
    """The run's last configured stage (from ``config.yaml``); ``ft`` when it cannot be read."""
    path = _join(root, "config.yaml")
    if fs.exists(path):
        import yaml

        with fs.open(path, "r") as handle:
            stages = (yaml.safe_load(handle) or {}).get("stages") or ["ft"]
        return str(stages[-1])
    return "ft"


def _newest_periodic(fs, root: str, stage: str) -> str | None:
    """The Ray checkpoint of ``stage`` with the highest step, or None."""
    best: tuple[int, str] | None = None
    for entry in fs.glob(_join(root, "checkpoint_*")):
        meta = _read_json(fs, _join(entry, META_FILE))
        if meta and meta.get("stage") == stage and (best is None or int(meta["step"]) > best[0]):
            best = (int(meta["step"]), entry)
    return best[1] if best else None


def _with_protocol(url: str, path: str) -> str:
    """Put the scheme of ``url`` back on an fsspec ``path`` (fsspec paths drop ``s3://``)."""
    if "://" in url and "://" not in path:
        return f"{url.split('://', 1)[0]}://{path}"
    return path


def resolve_checkpoint(
    target: str, choice: str = "last", storage_options: Mapping[str, Any] | None = None
) -> str:
    """The checkpoint directory (path or URL) that ``target`` + ``choice`` designate.

    target: a run directory or a checkpoint directory. choice: ``last``, ``best`` or a
    path/URL (then ``target`` only serves as the base of a relative path). Raises
    :class:`ConfigError` that names what was looked for when nothing usable is there.
    """
    if choice not in ("last", "best"):
        path = choice if ("://" in choice or choice.startswith("/")) else _join(str(target), choice)
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
    result = _read_json(fs, _join(root, "result.json")) or {}
    if choice == "best":
        recorded = result.get("best_checkpoint")
        candidates = [recorded] if recorded else []
        candidates.append(_join(target, "best"))
        for candidate in candidates:
            cfs, croot = filesystem_for(candidate, storage_options)
            if _is_checkpoint(cfs, croot):
                return candidate
        raise ConfigError(
            f"run {redact(target)} kept no best-on-validation checkpoint (looked for result.json "
            "'best_checkpoint' and best/meta.json); train with validation (eval.val_every > 0) "
            "or evaluate --checkpoint last"
        )
    stage = _last_stage(fs, root)
    final = _join(target, "stages", stage)
    if _is_checkpoint(fs, filesystem_for(final, storage_options)[1]):
        return final
    periodic = _newest_periodic(fs, root, stage)
    if periodic is not None:
        log.warning("run %s has no final %s checkpoint yet (unfinished?); using the newest periodic one, %s",
                    redact(target), stage, periodic)
        return _with_protocol(target, periodic)
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
    fs, root = filesystem_for(checkpoint_url, storage_options)
    record = _read_json(fs, _join(root, BEST_RECORD)) or {}
    return {"choice": "best", "rule": "highest mean Dice on the val split, chosen during training",
            "ft_step": record.get("ft_step"), "val_dice": record.get("val_dice"),
            "source": redact(record["source"]) if record.get("source") else None}


def _load_checkpoint_any(url: str, storage_options: Mapping[str, Any] | None):
    from action_ray.train.checkpoint import download_directory, load_checkpoint

    if not is_remote(url):
        return load_checkpoint(url, map_location="cpu")
    with tempfile.TemporaryDirectory(prefix="action-ray-eval-") as tmp:
        return load_checkpoint(download_directory(url, tmp, storage_options), map_location="cpu")


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
    from action_ray.model import build_unet

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    checkpoint = _load_checkpoint_any(checkpoint_url, storage_options)
    config = config_from_dict(checkpoint.config, f"{redact(checkpoint_url)} config")
    state = student_state(checkpoint.train_state["model"], checkpoint_url)
    num_classes = int(state[OUTPUT_WEIGHT].shape[0])
    dims = config.model.dims or config.data.dims
    network = build_unet(config.model.preset_or_widths, num_classes, dims=dims)
    network.load_state_dict(state)
    network.to(device).eval()
    return LoadedStudent(network, config, num_classes, checkpoint_url, checkpoint.stage, int(checkpoint.step))


def inference_settings(
    config: Config,
    dataset_meta: Mapping[str, Any] | None,
    *,
    batch_size: int | None = None,
    normalisation: Any = None,
):
    """:class:`InferenceSettings` that reproduce the run's data path on a store's cases.

    The normalisation is the training one: ``data.normalisation`` / ``data.intensity_window``
    when the run set them, else the store's recipe or modality default (``dataset_meta``),
    exactly as :class:`action_ray.data.streams.StreamSettings` resolves it for training.
    ``normalisation`` overrides both (a spec, dict or method name).
    """
    from action_ray.data.streams import StreamSettings
    from action_ray.evaluation.inference import InferenceSettings
    from action_ray.io.normalise import resolve_spec

    stream = StreamSettings.from_config(config.data)
    spec = resolve_spec(dataset_meta, normalisation if normalisation is not None else stream.normalisation)
    dims = config.model.dims or config.data.dims
    return InferenceSettings(
        dims=dims,
        normalisation=spec,
        slice_size=config.data.slice_size,
        image_interpolation=stream.image_interpolation,
        window=tuple(config.eval_window) if dims == 3 and config.eval_window else None,
        stride=tuple(config.eval.stride) if dims == 3 else None,
        batch_size=int(batch_size or config.eval.batch_size),
    )
