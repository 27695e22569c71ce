"""Experiment tracking (``train.tracking``): MLflow through Ray's own ``setup_mlflow``, or TensorBoard.

Why here and in this shape: Ray Train's integration for MLflow is ``ray.air.integrations.mlflow.
setup_mlflow``, called inside the training function; it opens one MLflow run on rank 0 and hands
the other ranks a no-op. We call it in the worker with the run's resolved (redacted) config as
the parameters and log every report's mean losses as ``<stage>/<name>`` at the stage's step.
A resumed run, or a new worker group after a failure, continues the same MLflow run (its
id is in ``tracking.json``); steps done again after a restart are logged again at their step.
Validation runs in the Train controller (:mod:`action_ray.train.validation`), a different
process: rank 0 therefore records where its run lives in ``<run>/tracking.json``, and the
validator adds ``val/dice`` (and per class) to the same MLflow run at the FT step. A sweep's
trials are training runs, so a sweep logs one MLflow run per trial, named after the trial.

TensorBoard: rank 0 writes the losses with ``tensorboardX`` (the writer behind Ray Tune's own
``TBXLoggerCallback``) into ``<run>/tensorboard`` (or ``train.tracking_uri``); the validator
writes its scores into the same folder, in its own event file.

MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE=true``; the default here *is*
a file store next to the runs (``<storage_path>/mlruns``: no server to run), so we allow it for
``file:`` URIs only. Point ``train.tracking_uri`` at a tracking server for anything shared.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from action_ray.errors import ConfigError
from action_ray.runs.files import read_json, write_file
from action_ray.runs.layout import TENSORBOARD_DIR, TRACKING_FILE, join
from action_ray.urls import is_remote, redact

EXPERIMENT = "action-ray"


def tracking_target(tracking: str, tracking_uri: str | None, storage_path: str, run_dir: str) -> str:
    """Where the backend writes: an MLflow tracking URI or a TensorBoard log folder."""
    if tracking == "mlflow":
        if tracking_uri:
            return tracking_uri
        if is_remote(storage_path):
            raise ConfigError("train.tracking=mlflow with an s3:// train.storage_path needs "
                              "train.tracking_uri (an MLflow server, e.g. http://mlflow:5000)")
        return "file://" + os.path.join(os.path.abspath(storage_path), "mlruns")
    if tracking == "tensorboard":
        target = tracking_uri or os.path.join(run_dir, TENSORBOARD_DIR)
        if is_remote(target):
            raise ConfigError("train.tracking=tensorboard writes event files to a local folder: set "
                              "train.tracking_uri=/a/local/dir when train.storage_path is s3://")
        return target
    raise ConfigError(f"train.tracking={tracking!r}: use none, mlflow or tensorboard")


def tracking_target_of(config: Any, run_dir: str) -> str | None:
    """The driver's resolution of ``train.tracking*`` (None: no tracking); fails before Ray starts."""
    import importlib.util

    t = config.train
    if t.tracking == "none":
        return None
    module = "mlflow" if t.tracking == "mlflow" else "tensorboardX"
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"train.tracking={t.tracking} needs {module}: pip install 'action-ray[tracking]'")
    return tracking_target(t.tracking, t.tracking_uri, t.resolved_storage_path, run_dir)


def _allow_file_store(uri: str) -> None:
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _flat_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat_params(value, name + "."))
        else:
            out[name] = redact(str(value))[:500]  # MLflow caps a parameter value at 6000 characters
    return out


class WorkerTracker:
    """Rank 0's logger of the per-report losses (a no-op on other ranks and for ``none``)."""

    def __init__(self, backend: str, writer: Any = None) -> None:
        self.backend = backend
        self._writer = writer

    def log(self, metrics: Mapping[str, Any]) -> None:
        """Log one report; a tracker that fails (server down, disk full) is reported once and
        switched off: it observes training and must never stop it."""
        if self._writer is None:
            return
        try:
            self._log(metrics)
        except Exception as exc:  # noqa: BLE001
            print(redact(f"experiment tracking ({self.backend}) failed and is off for this run: "
                         f"{type(exc).__name__}: {exc}")[:300])
            self._writer = None

    def _log(self, metrics: Mapping[str, Any]) -> None:
        stage, step = metrics["stage"], int(metrics["step"])
        values = {f"{stage}/{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time", "epoch")}
        if self.backend == "mlflow":
            self._writer.log_metrics(values, step=step)
        else:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None and self.backend == "tensorboard":
            self._writer.close()


def open_worker_tracker(backend: str, target: str | None, config: Any, run_dir: str, rank: int) -> WorkerTracker:
    """Start tracking in a Train worker (``target`` from `tracking_target_of`); rank 0 records the
    run in ``<run>/tracking.json`` for the validator."""
    if backend == "none" or target is None or rank != 0:
        return WorkerTracker("none")
    run_name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    previous = read_tracking(run_dir)
    if backend == "mlflow":
        _allow_file_store(target)
        if previous and previous.get("backend") == "mlflow" and previous.get("run_id"):
            import mlflow  # a resumed run (or a new worker group) continues its MLflow run

            mlflow.set_tracking_uri(target)
            mlflow.start_run(run_id=previous["run_id"])
        else:
            from ray.air.integrations.mlflow import setup_mlflow

            params = _flat_params(config.to_dict())
            mlflow = setup_mlflow(params, tracking_uri=target, experiment_name=config.train.tracking_experiment,
                                  run_name=run_name, create_experiment_if_not_exists=True,
                                  tags={"action_ray.run_dir": redact(run_dir)})
        record = {"backend": backend, "tracking_uri": redact(target), "run_id": mlflow.active_run().info.run_id}
        writer: Any = mlflow
    else:
        from tensorboardX import SummaryWriter

        os.makedirs(target, exist_ok=True)
        writer = SummaryWriter(logdir=target, filename_suffix=".train")
        record = {"backend": backend, "logdir": target}
    write_file(join(run_dir, TRACKING_FILE), json.dumps(record))
    return WorkerTracker(backend, writer)


def read_tracking(run_dir: str) -> dict[str, Any] | None:
    """``<run>/tracking.json`` (None when the run does not track)."""
    return read_json(join(run_dir, TRACKING_FILE))


def log_validation(run_dir: str, tracking_uri: str | None, row: Mapping[str, Any]) -> None:
    """Add one validation row (``val_dice`` and per-class ``val_*`` at its FT step) to the run's tracker.

    ``tracking_uri`` is the driver's unredacted target (``tracking.json`` holds a redacted copy).
    """
    record = read_tracking(run_dir)
    if record is None:
        return
    step = int(row["ft_step"])
    values = {f"val/{k[4:]}": float(v) for k, v in row.items()
              if k.startswith("val_") and isinstance(v, (int, float)) and v == v}
    if record["backend"] == "mlflow":
        from mlflow import MlflowClient

        uri = tracking_uri or record["tracking_uri"]
        _allow_file_store(uri)
        client = MlflowClient(uri)
        for name, value in values.items():
            client.log_metric(record["run_id"], name, value, step=step)
    elif record["backend"] == "tensorboard":
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir=record["logdir"], filename_suffix=".validation")
        for name, value in values.items():
            writer.add_scalar(name, value, step)
        writer.close()
