"""Run a sweep: one Tune trial = one driver function that builds and fits a `TorchTrainer`.

This is the Ray 2.60 pattern verified in docs/ray-notes §6: Tune cannot take a Train V2
trainer directly, so each trial runs :func:`trial_driver`, a tiny function (``driver_cpus``,
0.01 CPU by default) that fits a full training run whose workers hold the real resources. The
trial's workers report to Tune through :class:`ValidationReportCallback`, a
``TuneReportCallback`` that also scores the checkpoint on the **validation** split.

Why validation happens in the callback: the training loop reports losses, not Dice. The
callback runs in the Train controller each time the loop reports an FT checkpoint, evaluates
that checkpoint with :func:`action_ray.evaluation.evaluate_run` (``split="val"``) and forwards
``val_dice`` with ``ft_step`` to Tune, so ASHA compares methods at equal FT budgets. Reports
without a checkpoint, and all P1/P2 reports, are not forwarded: pre-training has no
segmentation to judge, and ASHA must not stop ACTION for a decoder it has not trained yet.
Training pauses while a validation runs (the report is a barrier); size ``train.checkpoint_every``
to the validation cadence you want.

The test split is used only after a trial ends (``tune.test_split``), for the table; it never
reaches Tune's metric, so it cannot influence early stopping or selection.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from action_ray.config import Config
from action_ray.errors import ActionRayError
from action_ray.tuning.space import TIME_ATTR, SweepConfig, dump_sweep, sweep_name, trial_config
from action_ray.urls import filesystem_for, is_remote, redact

#: Written by the validation callback in each run directory: one JSON line per validated checkpoint.
VALIDATION_LOG = "validation.jsonl"
#: Evaluation runs in the Train controller (validation) and the trial driver (test), which hold
#: no GPU: Ray hides the GPUs from them, and asking for one would wait on the GPU the trial's
#: own workers hold while they sit in the report barrier. So evaluation is on CPU.
EVAL_DEVICE = "cpu"


# ------------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class TrialResources:
    """What one trial holds: the driver's sliver plus its training workers."""

    driver_cpus: float
    worker_cpus: float
    worker_gpus: float

    @classmethod
    def of(cls, config: Config, driver_cpus: float) -> "TrialResources":
        t = config.train
        workers = max(1, t.num_workers)
        return cls(driver_cpus, workers * t.cpus_per_worker, workers * t.gpus_per_worker if t.use_gpu else 0.0)

    @property
    def cpus(self) -> float:
        return self.driver_cpus + self.worker_cpus

    def concurrency(self, cpus: float, gpus: float) -> int:
        """Trials that fit at once, leaving one CPU for Ray Data's read tasks (ray-notes §3)."""
        fit = math.floor(max(cpus - 1, 0) / self.cpus + 1e-9)
        if self.worker_gpus:
            fit = min(fit, math.floor(gpus / self.worker_gpus + 1e-9))
        return max(1, fit)


def ensure_tune_ray(sweep: SweepConfig, base: Config, resources: TrialResources,
                    log: Callable[[str], None] = print) -> None:
    """Connect to ``RAY_ADDRESS`` (as ``action-ray train`` does), or start a local Ray big
    enough for the requested concurrency.

    With ASHA the dashboard (State API) must be up: otherwise the placement groups of stopped
    trials are never cleaned and later trials wait forever (ray-notes §6).
    """
    import ray

    from action_ray.train.trainer import LOCAL_OBJECT_STORE_BYTES, RAY_ENV_DEFAULTS, ensure_ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        ensure_ray(base, log)
        return
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    concurrent = sweep.tune.max_concurrent_trials or 1
    num_cpus = max(os.cpu_count() or 1, math.ceil(concurrent * resources.cpus) + 1)
    num_gpus = None
    if resources.worker_gpus:
        import torch

        num_gpus = torch.cuda.device_count()
    dashboard = sweep.tune.uses_early_stopping
    log(f"starting a local Ray: {num_cpus} CPUs" + (f", {num_gpus} GPUs" if num_gpus else "")
        + (" (dashboard on: ASHA needs the State API)" if dashboard else ""))
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
             object_store_memory=LOCAL_OBJECT_STORE_BYTES, configure_logging=False)


# ------------------------------------------------------------------------------ evaluation
def summary_metrics(summary: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Flatten an ``evaluate_run`` summary: ``<prefix>_dice``, ``<prefix>_hd95_mm`` and per
    class ``<prefix>_dice_<name>``, ``<prefix>_hd95_mm_<name>`` (None -> NaN)."""

    def number(value: Any) -> float:
        return float("nan") if value is None else float(value)

    overall = summary.get("overall", {})
    out = {f"{prefix}_{key}": number(overall.get(key)) for key in ("dice", "hd95_mm", "asd_vox")}
    for entry in summary.get("per_class", {}).values():
        name = str(entry.get("name"))
        for key in ("dice", "hd95_mm"):
            out[f"{prefix}_{key}_{name}"] = number(entry.get(key))
    return out


def evaluate_checkpoint(run_dir: str, store: str, storage_options: Mapping[str, Any] | None, *,
                        split: str, checkpoint: str, out_dir: str, device: str) -> dict[str, float]:
    """Score one checkpoint of a run on ``split``; returns :func:`summary_metrics`."""
    from action_ray.evaluation import evaluate_run

    summary = evaluate_run(run_dir, store, split=split, out_dir=out_dir, checkpoint=checkpoint,
                           storage_options=storage_options, device=device, progress=False)
    return summary_metrics(summary, split)


def _append_line(path_dir: str, name: str, row: Mapping[str, Any]) -> None:
    fs, root = filesystem_for(path_dir)
    path = f"{root}/{name}"
    old = ""
    if fs.exists(path):
        with fs.open(path, "r") as handle:
            old = handle.read()
    with fs.open(path, "w") as handle:
        handle.write(old + json.dumps(row, sort_keys=True) + "\n")


def read_validation_log(run_dir: str) -> list[dict[str, Any]]:
    """Every validation the callback ran for this run, in order."""
    fs, root = filesystem_for(run_dir)
    path = f"{root}/{VALIDATION_LOG}"
    if not fs.exists(path):
        return []
    with fs.open(path, "r") as handle:
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


def _tune_report_callback_class():
    from ray.tune.integration.ray_train import TuneReportCallback

    return TuneReportCallback


class ValidationReportCallback(_tune_report_callback_class()):
    """Forward FT checkpoints to Tune with their validation Dice (see the module docstring)."""

    def __init__(self, run_dir: str, store: str, storage_options: Mapping[str, Any] | None, device: str) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.store = store
        self.storage_options = dict(storage_options or {})
        self.device = device

    def after_report(self, run_context, metrics, checkpoint) -> None:
        row = dict(metrics[0])
        if checkpoint is None or row.get("stage") != "ft":
            return
        step = int(row["step"])
        started = time.perf_counter()
        path = checkpoint.path
        if is_remote(self.run_dir) and "://" not in path:  # pyarrow paths drop the scheme
            path = f"{self.run_dir.split('://', 1)[0]}://{path}"
        scores = evaluate_checkpoint(
            self.run_dir, self.store, self.storage_options or None, split="val", checkpoint=path,
            out_dir=f"{self.run_dir}/validation/ft-{step:06d}", device=self.device)
        row.update(scores)
        row[TIME_ATTR] = step
        row["val_seconds"] = time.perf_counter() - started
        row["checkpoint_path"] = path
        _append_line(self.run_dir, VALIDATION_LOG, {"ft_step": step, **scores})
        self._training_actor_item_queue.put(row)


# ----------------------------------------------------------------------------- one trial
def _split_facts(run_dir: str) -> dict[str, Any]:
    """Labelled / total train patients of the run's recorded split (the table's x axis)."""
    fs, root = filesystem_for(run_dir)
    with fs.open(f"{root}/label_split.json", "r") as handle:
        split = json.loads(handle.read())
    labelled = len(split["labelled_patients"])
    total = labelled + len(split["unlabelled_patients"])
    return {"labelled_patients": labelled, "train_patients": total,
            "label_fraction": labelled / total if total else float("nan")}


def fit_run(config: Config, callbacks: list[Any]) -> dict[str, Any]:
    """``trainer.run_training`` with extra Ray Train callbacks: plan, fit, record ``result.json``.

    Kept to the training layer's public pieces (`plan_run`, `build_datasets`, `build_trainer`);
    the callbacks are the only addition. (A ``callbacks=`` parameter on ``run_training`` would
    make this function unnecessary.)
    """
    from action_ray.train.loop import LoopSettings
    from action_ray.train.trainer import build_datasets, build_trainer, plan_run, read_result

    plan = plan_run(config)
    if plan.complete:
        return read_result(plan.run_dir) or {}
    datasets, iter_kwargs = build_datasets(config, plan.split_json)
    settings = LoopSettings(config=config.to_dict(), label_split=plan.split_json, run_dir=plan.run_dir,
                            num_classes=plan.num_classes, iter_kwargs=iter_kwargs,
                            init_checkpoint=config.train.init_from, write_pid=not is_remote(plan.run_dir))
    trainer = build_trainer(config, settings, datasets, plan.name)
    trainer.run_config.callbacks = [*(trainer.run_config.callbacks or []), *callbacks]
    result = trainer.fit()
    summary = dict(result.return_value or {})
    summary.update(run_name=plan.name, run_dir=plan.run_dir, stages=list(config.stages or []),
                   final_checkpoint=f"{plan.run_dir}/stages/{summary.get('stage')}")
    fs, root = filesystem_for(plan.run_dir)
    with fs.open(f"{root}/result.json", "w") as handle:
        handle.write(json.dumps(summary, indent=2))
    return summary


def trial_driver(params: dict[str, Any], *, base: dict[str, Any], runs_dir: str, test_split: bool) -> None:
    """The Tune trainable: train one trial's config, validate its FT checkpoints, then report
    the final validation (and, if asked, test) metrics once more with the split facts."""
    import ray.tune
    from ray.data import DataContext

    ctx = ray.tune.get_context()
    name = f"{ctx.get_experiment_name()}-{ctx.get_trial_id()}"
    config = trial_config(base, params, **{"train.run_name": name, "train.storage_path": runs_dir,
                                           "train.resume": True})
    data_context = DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    run_dir = f"{config.train.resolved_storage_path.rstrip('/')}/{name}"
    callback = ValidationReportCallback(run_dir, str(config.data.store), config.data.storage_options, EVAL_DEVICE)
    started = time.perf_counter()
    summary = fit_run(config, [callback])
    train_seconds = time.perf_counter() - started
    final: dict[str, Any] = {"run_dir": run_dir, "train_seconds": train_seconds, **_split_facts(run_dir)}
    history = read_validation_log(run_dir)
    if history:
        final.update(history[-1])
    else:  # no FT checkpoint was reported (should not happen: every stage ends with one)
        final.update(evaluate_checkpoint(run_dir, str(config.data.store), config.data.storage_options or None,
                                         split="val", checkpoint="last", out_dir=f"{run_dir}/validation/last",
                                         device=EVAL_DEVICE))
        final[TIME_ATTR] = int(summary.get("step", 0))
    if test_split:
        started = time.perf_counter()
        final.update(evaluate_checkpoint(run_dir, str(config.data.store), config.data.storage_options or None,
                                         split="test", checkpoint="last", out_dir=f"{run_dir}/test",
                                         device=EVAL_DEVICE))
        final["test_seconds"] = time.perf_counter() - started
    ray.tune.report(final)


# ------------------------------------------------------------------------------- a sweep
@dataclass
class SweepOutcome:
    """Where the sweep wrote its files, its trial rows, and how long it took."""

    sweep_dir: str
    rows: list[dict[str, Any]]
    seconds: float


def run_sweep(sweep: SweepConfig, *, command: str | None = None,
              log: Callable[[str], None] = print) -> SweepOutcome:
    """Validate the sweep, run every trial on Ray Tune, and write the results files
    (``command`` is quoted in ``results.md``)."""
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from action_ray.tuning.results import trial_rows, write_results
    from action_ray.tuning.space import check_trials

    base = sweep.base_config()
    if not base.data.store:
        raise ActionRayError("the sweep's base config has no data.store: pass data.store=PATH_OR_URL")
    combos = check_trials(sweep, base)
    name = sweep_name(sweep)
    storage = sweep.tune.storage_path
    if not is_remote(storage):
        storage = os.path.abspath(storage)
    sweep_dir = f"{storage.rstrip('/')}/{name}"
    fs, root = filesystem_for(sweep_dir)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/sweep.yaml", "w") as handle:
        handle.write(dump_sweep(sweep))
    resources = TrialResources.of(base, sweep.tune.driver_cpus)
    ensure_tune_ray(sweep, base, resources, log)
    import ray

    cluster = ray.cluster_resources()
    concurrent = sweep.tune.max_concurrent_trials or resources.concurrency(cluster.get("CPU", 1), cluster.get("GPU", 0))
    log(f"sweep {name}: {len(combos)} grid points x {sweep.tune.num_samples} sample(s), "
        f"{concurrent} at a time, {resources.cpus:g} CPU"
        + (f" + {resources.worker_gpus:g} GPU" if resources.worker_gpus else "") + " per trial -> " + redact(sweep_dir))
    # stop_last_trials=False: a trial that reached the last FT step must still run its final
    # report (test split, split facts) instead of being stopped at max_t.
    scheduler = (ASHAScheduler(time_attr=TIME_ATTR, grace_period=sweep.tune.grace_period,
                               reduction_factor=sweep.tune.reduction_factor,
                               max_t=max(base.stage("ft").iterations, sweep.tune.grace_period),
                               stop_last_trials=False)
                 if sweep.tune.uses_early_stopping else FIFOScheduler())
    trainable = ray.tune.with_parameters(
        trial_driver, base=base.to_dict(redact_secrets=False), runs_dir=f"{sweep_dir}/runs",
        test_split=sweep.tune.test_split)
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(trainable, {"cpu": sweep.tune.driver_cpus}),
        param_space=sweep.param_space(),
        tune_config=ray.tune.TuneConfig(metric=sweep.tune.metric, mode=sweep.tune.mode,
                                        num_samples=sweep.tune.num_samples, scheduler=scheduler,
                                        max_concurrent_trials=concurrent),
        run_config=ray.tune.RunConfig(name=name, storage_path=f"{sweep_dir}/tune",
                                      failure_config=ray.tune.FailureConfig(max_failures=sweep.tune.max_failures)),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    rows = trial_rows(grid, list(sweep.space))
    write_results(sweep_dir, rows, metric=sweep.tune.metric, seconds=seconds, command=command)
    return SweepOutcome(sweep_dir, rows, seconds)
