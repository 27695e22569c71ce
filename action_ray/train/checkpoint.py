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
file under the final name. Ray Train uploads the directory (local or ``s3://``) after
``ray.train.report``; stage-final copies go straight to the run directory through fsspec.
Nothing here imports Ray.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from action_ray.errors import ConfigError

CHECKPOINT_FORMAT = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"


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
    """Python, NumPy and torch (CPU, and CUDA when present) RNG states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng` (CUDA states only when this process has CUDA)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` into the local ``directory`` (created): state first, marker last."""
    os.makedirs(directory, exist_ok=True)
    buffer = io.BytesIO()
    payload = asdict(checkpoint)
    payload["format"] = CHECKPOINT_FORMAT
    torch.save(payload, buffer)
    _write_atomic(os.path.join(directory, STATE_FILE), buffer.getvalue())
    _write_atomic(os.path.join(directory, META_FILE), json.dumps(checkpoint.meta(), indent=2).encode())


def load_checkpoint(directory: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a directory written by `save_checkpoint`; a clear error if it is incomplete."""
    if not os.path.exists(os.path.join(directory, META_FILE)):
        raise ConfigError(
            f"{directory} is not a complete action-ray checkpoint (no {META_FILE}); "
            "it was interrupted while being written or is not a checkpoint"
        )
    with open(os.path.join(directory, STATE_FILE), "rb") as handle:
        payload = torch.load(handle, map_location=map_location, weights_only=False)
    version = payload.pop("format", None)
    if version != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {directory} has format {version!r}, expected {CHECKPOINT_FORMAT}")
    payload["data_position"] = DataPosition(**payload["data_position"])
    return Checkpoint(**payload)


def upload_directory(local_dir: str, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Copy a local checkpoint directory to ``url`` (path or ``s3://``), marker file last.

    Used for the stage-final copies in the run directory; readers treat a copy without
    ``meta.json`` as absent, so an interrupted upload is never mistaken for a checkpoint.
    """
    from action_ray.urls import filesystem_for

    fs, root = filesystem_for(url, storage_options)
    fs.makedirs(root, exist_ok=True)
    if fs.exists(f"{root}/{META_FILE}"):
        fs.rm(f"{root}/{META_FILE}")
    names = sorted(os.listdir(local_dir), key=lambda name: name == META_FILE)
    for name in names:
        fs.put_file(os.path.join(local_dir, name), f"{root}/{name}")


def download_directory(url: str, local_dir: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Copy a checkpoint directory at ``url`` into ``local_dir``; returns ``local_dir``."""
    from action_ray.urls import filesystem_for, redact

    fs, root = filesystem_for(url, storage_options)
    if not fs.exists(f"{root}/{META_FILE}"):
        raise ConfigError(f"no complete checkpoint at {redact(url)} (missing {META_FILE})")
    os.makedirs(local_dir, exist_ok=True)
    for name in (STATE_FILE, META_FILE):
        fs.get_file(f"{root}/{name}", os.path.join(local_dir, name))
    return local_dir
