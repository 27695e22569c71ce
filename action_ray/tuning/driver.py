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
to the validation cadence you want (in a sweep every FT checkpoint is validated, whatever
``eval.val_every`` says). The scoring (:mod:`action_ray.train.validation`) and the files it
keeps, ``validation.jsonl`` and the best-on-validation ``best/`` (:mod:`action_ray.runs`), are
shared with ``action-ray train``.

The test split is used only after a trial ends (``tune.test_split``), for the table; it never
reaches Tune's metric, so it cannot influence early stopping or selection.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from action_ray.config import Config
from action_ray.data.splits import label_split
from action_ray.errors import ActionRayError
from action_ray.ray_session import start_for_sweep
from action_ray.runs.files import read_json
from action_ray.runs.layout import (
    LABEL_SPLIT_FILE,
    TEST_REPORTS_DIR,
    VALIDATION_DIR,
    join,
    run_dir_of,
)
from action_ray.runs.logs import read_validation_log
from action_ray.store import open_store
from action_ray.train.tracking import tracking_target_of
from action_ray.train.trainer import check_run_needs, run_training
from action_ray.train.validation import (
    EVAL_DEVICE,
    CheckpointValidator,
    evaluate_checkpoint,
    ft_checkpoint_step,
    validate_missed_resume_checkpoint,
)
from action_ray.tuning.outputs import write_results
from action_ray.tuning.results import trial_rows
from action_ray.tuning.space import (
    TIME_ATTR,
    SweepConfig,
    check_trials,
    dump_sweep,
    sweep_name,
    trial_config,
    trial_overrides,
)
from action_ray.urls import filesystem_for, is_remote, redact


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


def _tune_report_callback_class():
    from ray.tune.integration.ray_train import TuneReportCallback

    return TuneReportCallback


class ValidationReportCallback(_tune_report_callback_class()):
    """Forward FT checkpoints to Tune with their validation Dice (see the module docstring).

    Scoring, ``validation.jsonl`` and the best-on-validation ``best/`` are
    :class:`~action_ray.train.validation.CheckpointValidator`'s, as in ``action-ray train``;
    the schedule differs: every FT checkpoint is validated, because ASHA compares trials at
    each one (``train.checkpoint_every`` is the sweep's validation cadence).
    """

    def __init__(self, run_dir: str, store: str, storage_options: Mapping[str, Any] | None, device: str,
                 tracking_target: str | None = None) -> None:
        super().__init__()
        self.validator = CheckpointValidator(run_dir, store, storage_options, device, tracking_target)

    @property
    def run_dir(self) -> str:
        return self.validator.run_dir

    def before_resume(self, log: Callable[[str], None] = print) -> None:
        """A resumed trial first scores its resume checkpoint if that was never validated (Tune
        does not see that row; ``validation.jsonl`` and ``best/`` do)."""
        validate_missed_resume_checkpoint(self.validator, lambda _step: True, log)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        step = ft_checkpoint_step(metrics, checkpoint)
        if step is None:
            return
        path = self.validator.checkpoint_url(checkpoint.path)
        validation = self.validator.try_validate(step, path)
        if validation is None:  # logged and recorded; Tune just does not see this step
            return
        row = dict(metrics[0])
        row.update({k: v for k, v in validation.items() if k.startswith("val_")})
        row[TIME_ATTR] = step
        row["val_seconds"] = validation["validation_seconds"]
        row["checkpoint_path"] = path
        self._training_actor_item_queue.put(row)


# ----------------------------------------------------------------------------- one trial
def _split_facts(run_dir: str) -> dict[str, Any]:
    """Labelled / total train patients of the run's recorded split (the table's x axis)."""
    split = read_json(join(run_dir, LABEL_SPLIT_FILE))
    labelled = len(split["labelled_patients"])
    total = labelled + len(split["unlabelled_patients"])
    return {"labelled_patients": labelled, "train_patients": total,
            "label_fraction": labelled / total if total else float("nan")}


def fit_run(config: Config, callbacks: list[Any]) -> dict[str, Any]:
    """``trainer.run_training`` with the trial's Ray Train callbacks (instead of its default
    validation callback): plan, fit, record ``result.json`` (with the best-on-validation
    checkpoint the callbacks kept)."""

    return run_training(config, callbacks=callbacks, log=lambda _line: None, follow=False)


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
    run_dir = run_dir_of(config.train.resolved_storage_path, name)
    callback = ValidationReportCallback(run_dir, str(config.data.store), config.data.storage_options, EVAL_DEVICE,
                                        tracking_target_of(config, run_dir))
    started = time.perf_counter()
    summary = fit_run(config, [callback])
    train_seconds = time.perf_counter() - started
    final: dict[str, Any] = {"run_dir": run_dir, "train_seconds": train_seconds, **_split_facts(run_dir)}
    history = read_validation_log(run_dir)
    if history:
        final.update({k: v for k, v in history[-1].items() if k == "ft_step" or k.startswith("val_")})
    else:  # no FT checkpoint was reported (should not happen: every stage ends with one)
        final.update(evaluate_checkpoint(run_dir, str(config.data.store), config.data.storage_options or None,
                                         split="val", checkpoint="last", out_dir=join(run_dir, VALIDATION_DIR, "last"),
                                         device=EVAL_DEVICE))
        final[TIME_ATTR] = int(summary.get("step", 0))
    if test_split:
        started = time.perf_counter()
        final.update(evaluate_checkpoint(run_dir, str(config.data.store), config.data.storage_options or None,
                                         split="test", checkpoint="last", out_dir=join(run_dir, TEST_REPORTS_DIR),
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


def preflight_trials(sweep: SweepConfig, base: Config) -> list[dict[str, Any]]:
    """Check every grid point against the store before Ray starts; return the grid's overrides.

    Reads the store's index once. Each trial's config must be valid (`check_trials`), its label
    split must be drawable, and its stages must find what they need (`check_run_needs`:
    unlabelled patients, classes). A sweep is scored on validation Dice, so the store needs a
    labelled val case. The error names the trial and says what to change.
    """

    combos = check_trials(sweep, base)
    if not base.data.store:
        raise ActionRayError("the sweep's base config has no data.store: pass data.store=PATH_OR_URL")
    store = open_store(str(base.data.store), base.data.storage_options or None)
    if not any(case.has_label for case in store.list_cases(split="val")):
        raise ActionRayError(f"store {redact(str(base.data.store))} has no labelled case in its val split, and a "
                             f"sweep ranks trials by {sweep.tune.metric}: ingest with a val split "
                             "(see `action-ray ingest --help`, split options)")
    tree = base.to_dict(redact_secrets=False)
    for combo in combos:
        config = trial_config(tree, combo)
        d = config.data
        try:
            split = label_split(store, label_ratio=d.label_ratio, num_labelled_patients=d.labelled_patients,
                                seed=d.split_seed)
            num_classes = config.model.num_classes or (max(store.classes) + 1)
            check_run_needs(config, split, store, num_classes)
        except ActionRayError as exc:
            where = " ".join(f"{k}={v}" for k, v in trial_overrides(combo).items())
            raise type(exc)(f"trial [{where}]: {exc}") from None
    return combos


def check_resumable(sweep_dir: str, experiment_dir: str, sweep_text: str, resume: bool) -> None:
    """Refuse to start a sweep over an earlier one of the same name, or to resume what is not there.

    ``--resume`` needs Tune's experiment state in ``<sweep>/tune/<name>`` and the same resolved
    sweep as the interrupted run (``sweep.yaml``): a changed grid would resume trials the table
    no longer describes. Runs before Ray starts, so a wrong command costs nothing.
    """
    import ray.tune

    exists = ray.tune.Tuner.can_restore(experiment_dir)
    where = redact(sweep_dir)
    if resume and not exists:
        raise ActionRayError(f"--resume: there is no interrupted sweep at {where} (no Tune experiment state in "
                             f"tune/); run the same command without --resume to start it")
    if exists and not resume:
        raise ActionRayError(f"a sweep already exists at {where}: pass --resume to continue it (finished trials "
                             f"are kept), or give tune.name=NEW for a new sweep")
    if resume:
        fs, root = filesystem_for(sweep_dir)
        try:
            with fs.open(f"{root}/sweep.yaml", "r") as handle:
                previous = handle.read()
        except FileNotFoundError:
            previous = sweep_text
        if previous != sweep_text:
            raise ActionRayError(f"--resume: the sweep differs from the interrupted one in {where}/sweep.yaml; "
                                 f"resume with the same --config and overrides, or give tune.name=NEW")


def run_sweep(sweep: SweepConfig, *, command: str | None = None, resume: bool = False,
              log: Callable[[str], None] = print) -> SweepOutcome:
    """Validate the sweep, run every trial on Ray Tune, and write the results files
    (``command`` is quoted in ``results.md``).

    ``resume``: continue an interrupted sweep of the same name with ``Tuner.restore``. Finished
    trials keep their results; unfinished and errored ones run again, and each picks up its own
    training run from that run's last checkpoint (trials train with ``train.resume``).
    """
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    base = sweep.base_config()
    combos = preflight_trials(sweep, base)
    name = sweep_name(sweep)
    storage = sweep.tune.storage_path
    if not is_remote(storage):
        storage = os.path.abspath(storage)
    sweep_dir = f"{storage.rstrip('/')}/{name}"
    experiment_dir = f"{sweep_dir}/tune/{name}"
    sweep_text = dump_sweep(sweep)
    check_resumable(sweep_dir, experiment_dir, sweep_text, resume)
    fs, root = filesystem_for(sweep_dir)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/sweep.yaml", "w") as handle:
        handle.write(sweep_text)
    resources = TrialResources.of(base, sweep.tune.driver_cpus)
    start_for_sweep(sweep.tune.max_concurrent_trials or 1, resources.cpus, resources.worker_gpus,
                    early_stopping=sweep.tune.uses_early_stopping, log=log)
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
    trainable = ray.tune.with_resources(trainable, {"cpu": sweep.tune.driver_cpus})
    if resume:
        log(f"resuming sweep {name} from {redact(experiment_dir)}")
        tuner = ray.tune.Tuner.restore(experiment_dir, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, param_space=sweep.param_space())
    else:
        tuner = _new_tuner(sweep, base, trainable, scheduler, concurrent, name, sweep_dir)
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    rows = trial_rows(grid, list(sweep.space))
    write_results(sweep_dir, rows, metric=sweep.tune.metric, seconds=seconds, command=command)
    return SweepOutcome(sweep_dir, rows, seconds)


def _new_tuner(sweep: SweepConfig, base: Config, trainable: Any, scheduler: Any, concurrent: int, name: str,
               sweep_dir: str) -> Any:
    import ray.tune

    return ray.tune.Tuner(
        trainable,
        param_space=sweep.param_space(),
        tune_config=ray.tune.TuneConfig(metric=sweep.tune.metric, mode=sweep.tune.mode,
                                        num_samples=sweep.tune.num_samples, scheduler=scheduler,
                                        max_concurrent_trials=concurrent),
        run_config=ray.tune.RunConfig(name=name, storage_path=f"{sweep_dir}/tune",
                                      failure_config=ray.tune.FailureConfig(max_failures=sweep.tune.max_failures)),
    )
