"""Save and load everything a run needs to continue exactly where it stopped (contract 5).

A checkpoint is a directory with two files:

* ``state.pt`` — ``torch.save`` of one dict: the `TrainState` (student, teacher, heads, banks,
  optimiser, poly schedule, step, torch + generator RNG), the RNG states of *every* rank
  (python ``random``, NumPy, torch, the augmentation generator: ranks draw differently, so rank
  0's alone would not reproduce rank 1), the data position (epoch and batches consumed in it),
  the stage, the metrics history, the config and the label split;
* ``meta.json`` — a small, human-readable summary (stage, step, config hash). It is written
  last and doubles as the completion marker: a directory without it is not a checkpoint.

Both files are written to a temporary name and renamed, so a crash never leaves a half-written
file under the final name.

**A checkpoint carries no code.** ``state.pt`` holds only tensors, numbers, strings, lists and
dicts (the Python and NumPy RNG states are stored as tensors and numbers, not as the tuples
and arrays their ``getstate`` returns), and it is read with ``torch.load(weights_only=True)``,
which refuses anything else. A shared checkpoint is data, and unpickling a crafted ``state.pt``
would run its payload before any check; so a file that needs more than that is refused with a
message, never unpickled. Checkpoints of format 1 (before this rule) stored NumPy objects;
`convert_checkpoint` (``action-ray convert-checkpoint --trust-pickle``) rewrites one you trust. Ray Train uploads the directory (local or ``s3://``) after
``ray.train.report``; stage-final copies go straight to the run directory through fsspec.
Nothing here imports Ray.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from action_ray.errors import ConfigError
from action_ray.files import write_atomic
from action_ray.runs.layout import CHECKPOINT_FILES, META_FILE, STATE_FILE
from action_ray.urls import filesystem_for, is_remote, redact

CHECKPOINT_FORMAT = 2
#: The format that stored Python/NumPy RNG objects and needed full unpickling to read.
PICKLE_FORMAT = 1


@dataclass
class DataPosition:
    """Where the data stream of the current stage stands: epoch and batches taken in it."""

    epoch: int = 0
    batches: int = 0


@dataclass
class Checkpoint:
    """The content of one checkpoint; ``train_state`` is ``TrainState.state_dict()``."""

    stage: str
    step: int
    train_state: dict[str, Any]
    rank_rng: list[dict[str, Any]]
    data_position: DataPosition
    config: dict[str, Any]
    label_split: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stage_done: bool = False

    def meta(self) -> dict[str, Any]:
        """What ``meta.json`` holds: enough to list checkpoints without loading tensors."""
        return {
            "format": CHECKPOINT_FORMAT,
            "stage": self.stage,
            "step": self.step,
            "stage_done": self.stage_done,
            "data_position": asdict(self.data_position),
            "world_size": len(self.rank_rng),
        }


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, and CUDA when present) RNG states of this process, as
    tensors and numbers only (so that ``torch.load(weights_only=True)`` reads them back)."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    if kind != "MT19937":  # pragma: no cover - NumPy's legacy global RNG is always MT19937
        raise ConfigError(f"cannot record NumPy's global RNG of kind {kind!r}")
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng` (CUDA states only when this process has CUDA)."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(w) for w in python["state"].tolist()), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _legacy_rng(state: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 RNG record (``random.getstate()`` tuple, NumPy state tuple) in today's form."""
    version, words, gauss = state["python"]
    _, keys, position, has_gauss, cached = state["numpy"]
    out = dict(state)
    out["python"] = {"version": int(version), "state": torch.tensor(words, dtype=torch.int64),
                     "gauss": None if gauss is None else float(gauss)}
    out["numpy"] = {"keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(position),
                    "has_gauss": int(has_gauss), "gauss": float(cached)}
    return out


def save_checkpoint(directory: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` into the local ``directory`` (created): state first, marker last."""
    os.makedirs(directory, exist_ok=True)
    buffer = io.BytesIO()
    payload = asdict(checkpoint)
    payload["format"] = CHECKPOINT_FORMAT
    torch.save(payload, buffer)
    write_atomic(os.path.join(directory, STATE_FILE), buffer.getvalue())
    write_atomic(os.path.join(directory, META_FILE), json.dumps(checkpoint.meta(), indent=2).encode())


def _meta_format(directory: str) -> Any:
    try:
        with open(os.path.join(directory, META_FILE)) as handle:
            return json.load(handle).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def load_checkpoint(directory: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a directory written by `save_checkpoint`, without ever unpickling code.

    Raises :class:`ConfigError` with a one-line message naming the file when the directory is
    incomplete, ``state.pt`` is missing or unreadable, holds anything but plain data (a crafted
    file, or an old format-1 checkpoint: the message says how to convert one you trust), or has
    another format version.
    """
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(os.path.join(directory, META_FILE)):
        raise ConfigError(
            f"{directory} is not a complete action-ray checkpoint (no {META_FILE}); "
            "it was interrupted while being written or is not a checkpoint"
        )
    if not os.path.isfile(state_path):
        raise ConfigError(f"checkpoint {directory} has no {STATE_FILE}; it is incomplete, copy it again")
    try:
        with open(state_path, "rb") as handle:
            payload = torch.load(handle, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _meta_format(directory) == PICKLE_FORMAT:
            raise ConfigError(
                f"{state_path} is an action-ray checkpoint of format {PICKLE_FORMAT}, which stores Python "
                "objects that could run code when loaded; if you trust where it came from, convert it once "
                "with `action-ray convert-checkpoint SRC DST --trust-pickle`"
            ) from None
        raise ConfigError(
            f"refusing to load {state_path}: it holds Python objects other than tensors, numbers and "
            f"strings, which could run code ({str(exc).splitlines()[0][:120]}); it was not written by "
            "action-ray, or was altered"
        ) from None
    except Exception as exc:  # noqa: BLE001 - corrupt bytes fail in many ways inside torch.load
        raise ConfigError(f"{state_path} is not a readable checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else 'empty'}); copy it again") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{state_path} does not hold an action-ray checkpoint")
    version = payload.pop("format", None)
    if version != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {directory} has format {version!r}, expected {CHECKPOINT_FORMAT}")
    try:
        payload["data_position"] = DataPosition(**payload["data_position"])
        return Checkpoint(**payload)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{state_path} is missing checkpoint fields ({exc}); it was not written by action-ray") from None


def convert_checkpoint(source: str, target: str) -> Checkpoint:
    """Rewrite a format-1 checkpoint directory you trust as a format-2 one (plain data only).

    This unpickles ``source/state.pt`` in full (``weights_only=False``): it can run code hidden in
    the file, which is why only the explicit ``--trust-pickle`` command calls it.
    """
    if _meta_format(source) != PICKLE_FORMAT:
        raise ConfigError(f"{source} is not a format-{PICKLE_FORMAT} checkpoint (nothing to convert)")
    with open(os.path.join(source, STATE_FILE), "rb") as handle:
        payload = torch.load(handle, map_location="cpu", weights_only=False)  # trusted by the caller
    payload.pop("format", None)
    payload["rank_rng"] = [
        {**entry, "rng": _legacy_rng(entry["rng"])} if "rng" in entry else _legacy_rng(entry)
        for entry in payload["rank_rng"]
    ]
    payload["data_position"] = DataPosition(**payload["data_position"])
    checkpoint = Checkpoint(**payload)
    save_checkpoint(target, checkpoint)
    load_checkpoint(target)  # proves the result reads back without unpickling
    return checkpoint


def upload_directory(local_dir: str, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Copy a local checkpoint directory to ``url`` (path or ``s3://``), marker file last.

    Used for the stage-final copies in the run directory; readers treat a copy without
    ``meta.json`` as absent, so an interrupted upload is never mistaken for a checkpoint.
    """
    fs, root = filesystem_for(url, storage_options)
    fs.makedirs(root, exist_ok=True)
    if fs.exists(f"{root}/{META_FILE}"):
        fs.rm(f"{root}/{META_FILE}")
    names = sorted(os.listdir(local_dir), key=lambda name: name == META_FILE)
    for name in names:
        fs.put_file(os.path.join(local_dir, name), f"{root}/{name}")


def download_directory(url: str, local_dir: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Copy a checkpoint directory at ``url`` into ``local_dir``; returns ``local_dir``."""
    fs, root = filesystem_for(url, storage_options)
    if not fs.exists(f"{root}/{META_FILE}"):
        raise ConfigError(f"no complete checkpoint at {redact(url)} (missing {META_FILE})")
    os.makedirs(local_dir, exist_ok=True)
    for name in CHECKPOINT_FILES:
        fs.get_file(f"{root}/{name}", os.path.join(local_dir, name))
    return local_dir


def load_checkpoint_from(url: str, storage_options: Mapping[str, Any] | None = None,
                         map_location: str | torch.device = "cpu") -> Checkpoint:
    """`load_checkpoint` of a checkpoint directory anywhere: read in place when local, else
    downloaded to a temporary folder first (``torch.load`` wants a local file)."""
    if not is_remote(url):
        return load_checkpoint(url, map_location=map_location)
    with tempfile.TemporaryDirectory(prefix="action-ray-checkpoint-") as tmp:
        return load_checkpoint(download_directory(url, tmp, storage_options), map_location=map_location)
