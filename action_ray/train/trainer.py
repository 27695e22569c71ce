"""Build and run the `TorchTrainer` of a training run: Ray settings in one place.

One run = one ``TorchTrainer.fit()`` over every stage (see ``train.loop``), so Ray Train's own
mechanisms cover both failure modes:

* a worker dies → ``FailureConfig(max_failures=train.max_failures)`` starts a new worker group,
  whose ``get_checkpoint()`` is the last reported checkpoint (stage and step included);
* the driver dies or the user stops it → running again with the same run name (``--resume``)
  makes Ray find ``<storage_path>/<run_name>/`` and hand the workers the latest checkpoint.

The run directory ``<storage_path>/<run_name>/`` (local or ``s3://``, laid out as
:mod:`action_ray.runs.layout` says) holds ``config.yaml``, ``label_split.json``,
``metrics.jsonl``, Ray's ``checkpoint_*`` folders, the final checkpoint of each stage in
``stages/<stage>/`` and ``result.json`` once every stage is done; with ``eval.val_every > 0``
also ``validation.jsonl`` and the best-on-validation checkpoint ``best/``
(:mod:`action_ray.train.validation`, :mod:`action_ray.runs.best`), named in ``result.json`` as
``best_checkpoint``. On S3, Ray
(pyarrow) and our own writes (fsspec) both take credentials and endpoint from the standard
``AWS_*`` environment variables; set them before Ray starts (or in the job's runtime_env).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from action_ray.config import PER_WORKER_BATCH_KEYS, STAGE_ORDER, Config, config_from_dict, with_workers
from action_ray.data.splits import LabelSplit, label_split
from action_ray.data.streams import StreamSettings, build_streams
from action_ray.errors import ActionRayError, ConfigError, StoreError
from action_ray.ray_session import start_for_training
from action_ray.runs.best import read_best
from action_ray.runs.checkpoint import load_checkpoint_from
from action_ray.runs.files import read_text, write_file
from action_ray.runs.layout import (
    CONFIG_FILE,
    LABEL_SPLIT_FILE,
    RESULT_FILE,
    join,
    run_dir_of,
    stage_checkpoint,
)
from action_ray.runs.logs import (
    read_metrics,
    read_result,
    read_validation_log,
    write_result,
)
from action_ray.runs.resolve import latest_ray_checkpoint
from action_ray.store import open_store
from action_ray.train.curves import write_curves
from action_ray.train.failure import describe_training_failure
from action_ray.train.follow import ReportFollower
from action_ray.train.loop import LoopSettings, settings_dict, train_loop_per_worker
from action_ray.train.progress import progress_mode_for_this_terminal
from action_ray.train.tracking import tracking_target_of
from action_ray.train.validation import (
    ValidationCallback,
    ValidationSchedule,
    labelled_val_cases,
)
from action_ray.urls import is_remote, redact


def data_config(config: Config):
    """Ray Train ``DataConfig``: equal, disjoint shards of every dataset; ordered execution in
    deterministic mode (so a resumed worker can skip exactly the batches it already took)."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    options = ExecutionOptions(preserve_order=True) if config.train.deterministic else None
    return DataConfig(datasets_to_split="all", execution_options=options)


def build_trainer(config: Config, settings: LoopSettings, datasets: dict[str, Any], run_name: str,
                  callbacks: Sequence[Any] = ()):
    """The `TorchTrainer` of a run: fractional CPU workers or GPU workers, gloo/nccl with the
    configured collective timeout, checkpoints kept per ``train.num_to_keep``, retries per
    ``train.max_failures``, and the given Ray Train ``callbacks`` (validation)."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    t = config.train
    resources: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    resources.update(t.worker_resources)
    scaling = ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                            placement_strategy=t.placement_strategy)
    run_config = RunConfig(
        name=run_name,
        storage_path=t.resolved_storage_path,
        failure_config=FailureConfig(max_failures=t.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
        logging_config=LoggingConfig("WARNING"),  # rank 0 prints the progress; Ray's INFO lines drown it
        callbacks=list(callbacks) or None,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=settings_dict(settings),
        torch_config=TorchConfig(backend=t.resolved_backend, timeout_s=t.collective_timeout_s),
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
        dataset_config=data_config(config),
    )


# ------------------------------------------------------------------------- run directory
@dataclass
class RunPlan:
    """Where a run lives and what it trains on, settled before any worker starts."""

    name: str
    run_dir: str
    split_json: str
    num_classes: int
    resuming: bool
    complete: bool
    config: Config  # the config the run trains with (per-worker batches rescaled on an elastic resume)
    note: str = ""  # what plan_run changed, for the log


def run_name(config: Config) -> str:
    """``train.run_name``, or ``<method>-<config hash>`` so the same config finds its run."""
    return config.train.run_name or f"{config.method}-{config.hash()}"


def check_run_needs(config: Config, split: Any, store: Any, num_classes: int) -> None:
    """What the configured stages need from the store, checked from its index before Ray starts.

    Raises a one-line :class:`ConfigError` saying what to change: unlabelled train patients for
    pre-training and the semi-supervised methods, enough classes in the model for the store's
    labels. (The labelled patients for the ratio are checked by the split itself.)
    """
    stages = list(config.stages or [])
    d = config.data
    needs_unlabelled = (config.method in ("mean_teacher", "action", "action_ft_only") and "ft" in stages) or (
        any(s in stages for s in ("p1", "p2")) and d.pretrain_unlabelled_batch > 0)
    if needs_unlabelled and not split.unlabelled_cases:
        raise ConfigError(
            f"method={config.method} (stages {', '.join(stages)}) trains on unlabelled patients, but all "
            f"{len(split.labelled_patients)} train patients of the store are labelled by this split; lower "
            "data.label_ratio / data.labelled_patients, ingest unlabelled scans, or use method=supervised"
        )
    store_classes = max(store.classes) + 1
    if num_classes < store_classes:
        raise ConfigError(
            f"model.num_classes={num_classes} is fewer than the store's {store_classes} classes "
            f"({', '.join(f'{k}={v}' for k, v in sorted(store.classes.items()))}); remove model.num_classes "
            "to take them from the store"
        )


def check_stored_chunks(config: Config, store: Any) -> None:
    """Refuse, before Ray starts, a store that lost chunks of the cases this run reads.

    Why: zarr reads a deleted chunk as the fill value without an error, so a run would train on
    zeros where an image or label was. Ingest records how many chunks each array holds;
    ``VolumeStore.verify_case`` lists them (one listing per array). Done for the train split and,
    with validation on, the val split; on local stores by default, on ``s3://`` only with
    ``data.verify_chunks=true`` (a request per array adds up over thousands of cases).
    """
    wanted = config.data.verify_chunks
    if wanted is False or (wanted is None and is_remote(config.data.store)):
        return
    splits = ["train"] + (["val"] if config.eval.val_every > 0 else [])
    damaged = []
    for split in splits:
        for info in store.list_cases(split=split):
            try:
                store.verify_case(info.case_id)
            except StoreError as exc:
                damaged.append((info.case_id, str(exc)))
    if damaged:
        first = damaged[0][1]
        more = f" (and {len(damaged) - 1} more: {', '.join(c for c, _ in damaged[1:6])})" if len(damaged) > 1 else ""
        raise ConfigError(f"{first}{more}; training would read a missing chunk as zeros "
                          "(data.verify_chunks=false trains anyway)")


def plan_run(config: Config, write: bool = True) -> RunPlan:
    """Resolve the run directory; check ``--resume`` against what is there; record config and split.

    A fresh run refuses an existing directory (it would silently resume, ray-notes §1); a
    resumed run must have the same config hash and reuses the recorded label split. Every check
    (`check_run_needs`) comes before the first write; ``write=False`` (``--dry-run``) writes
    nothing at all.
    """

    if not config.data.store:
        raise ConfigError("data.store is not set: pass data.store=PATH_OR_URL (a store made by `action-ray ingest`)")
    stages = list(config.stages or [])
    order = [s for s in STAGE_ORDER if s in stages]
    if STAGE_ORDER[STAGE_ORDER.index(order[0]): STAGE_ORDER.index(order[-1]) + 1] != tuple(stages):
        raise ConfigError(f"stages={stages} skips a stage; hand-offs go p1 -> p2 -> ft, so train consecutive stages")
    name = run_name(config)
    run_dir = run_dir_of(config.train.resolved_storage_path, name)
    saved_config = read_text(join(run_dir, CONFIG_FILE))
    if saved_config is not None and not config.train.resume:
        raise ConfigError(
            f"run {name!r} already exists at {redact(run_dir)}; pass --resume to continue it, "
            "or choose another train.run_name"
        )
    saved_split = None
    if saved_config is not None:
        import yaml

        previous = config_from_dict(yaml.safe_load(saved_config), join(run_dir, CONFIG_FILE))
        config, note = elastic_resume(config, previous)
        if previous.hash() != config.hash():
            raise ConfigError(
                f"--resume: the config differs from the one saved with run {name!r} "
                f"({previous.hash()} vs {config.hash()}); resume with the same settings or start a new run_name"
            )
        saved_split = read_text(join(run_dir, LABEL_SPLIT_FILE))
    store = open_store(config.data.store, config.data.storage_options or None)
    num_classes = config.model.num_classes or (max(store.classes) + 1)
    if saved_split is not None:
        split = LabelSplit.from_json(saved_split)
    else:
        split = label_split(store, label_ratio=config.data.label_ratio,
                            num_labelled_patients=config.data.labelled_patients, seed=config.data.split_seed)
    check_run_needs(config, split, store, num_classes)
    check_stored_chunks(config, store)
    if write:
        write_file(join(run_dir, LABEL_SPLIT_FILE), split.to_json())
        write_file(join(run_dir, CONFIG_FILE), config.to_yaml())  # last: it marks the run as existing
    complete = read_text(join(run_dir, RESULT_FILE)) is not None
    return RunPlan(name, run_dir, split.to_json(), num_classes, saved_config is not None, complete, config,
                   note if saved_config is not None else "")


def elastic_resume(config: Config, previous: Config) -> tuple[Config, str]:
    """``config`` for resuming a run saved as ``previous``, keeping the run's global batch.

    What stays fixed is the **global** batch: when the per-worker batches of ``config`` would
    change it (because ``train.num_workers`` changed, or because the command repeats the per-worker
    batches of an earlier, since rescaled, resume), every per-worker batch becomes the saved global
    batch / workers (an uneven split is refused), so the optimiser sees batches of the same size,
    the global bank keeps its size (K = bank_batches × global batch) and its contents, and the
    data position (batches taken in the epoch, which are global steps) carries over. Returns the
    config and a line saying what changed ("" if nothing did). Any other difference is left for
    the hash check to report.
    """
    old, new = max(1, previous.train.num_workers), max(1, config.train.num_workers)
    moved = "" if old == new else f"resuming on {new} worker(s) instead of {old}"
    if previous.hash() == config.hash():
        return config, (f"{moved}; global batch unchanged" if moved else "")
    rescaled = with_workers(config, config.train.num_workers, like=previous)
    if rescaled.hash() != previous.hash():
        return config, ""  # something besides the batches differs: the hash check says so
    batches = ", ".join(f"{key}={getattr(rescaled.data, key)}" for key in PER_WORKER_BATCH_KEYS)
    return rescaled, (f"{moved or f'resuming on {new} worker(s)'}: per-worker batches set to keep the run's "
                      f"global batch ({batches})")


# --------------------------------------------------------------------------------- a run
def build_datasets(config: Config, split_json: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The labelled / unlabelled Ray Datasets of the split, and the loop's iteration kwargs."""

    overrides: dict[str, Any] = {}
    if config.train.deterministic:
        overrides["seed"] = config.train.seed
    settings = StreamSettings.from_config(config.data, **overrides)
    streams = build_streams(config.data.store, config.data.storage_options or None,
                            LabelSplit.from_json(split_json), settings)
    datasets = {"labelled": streams.labelled}
    if streams.unlabelled is not None:
        datasets["unlabelled"] = streams.unlabelled
    return datasets, streams.meta.iter_kwargs()


def validation_callbacks(config: Config, run_dir: str, log: Callable[[str], None] = print) -> list[Any]:
    """The validation callback of a run (see ``train.validation``), or none, with the reason logged.

    Off when ``eval.val_every`` is 0, when the run trains no FT stage, in Ray Train's local mode
    (``train.num_workers=0``: no checkpoints are kept to score) and when the store's val split
    has no labelled case (training still runs; ``--checkpoint best`` then has nothing to serve).
    """

    schedule = ValidationSchedule.of(config)
    if "ft" not in (config.stages or []):
        return []  # pre-training has no segmentation to validate
    if not schedule.enabled:
        log("validation off (eval.val_every=0): no best-on-validation checkpoint will be kept")
        return []
    if config.train.num_workers == 0:
        log("validation off: Ray Train's local mode (train.num_workers=0) keeps no checkpoints to score")
        return []
    if not labelled_val_cases(str(config.data.store), config.data.storage_options):
        log(f"validation off: the store {redact(str(config.data.store))} has no labelled case in its val "
            "split, so no best-on-validation checkpoint will be kept")
        return []
    log(schedule.describe())
    return [ValidationCallback.for_run(config, run_dir)]


def best_summary(run_dir: str) -> dict[str, Any]:
    """``best_checkpoint`` / ``best_val_dice`` / ``best_ft_step`` for ``result.json``, if a best was kept."""
    best = read_best(run_dir)
    if best is None:
        return {}
    return {"best_checkpoint": best.checkpoint, "best_val_dice": best.val_dice, "best_ft_step": best.ft_step}


def check_checkpoint(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Load the checkpoint at ``url`` (local or remote) once on the driver, before Ray starts.

    ``load_checkpoint`` never unpickles objects, so a crafted or corrupt file is refused here
    with a one-line :class:`ConfigError` naming it, instead of failing in every worker attempt.
    """
    load_checkpoint_from(url, storage_options)


def _write_run_curves(plan: RunPlan, log: Callable[[str], None]) -> None:
    """``curves.png`` from the run's reports and validations; a plotting failure only warns."""

    try:
        where = write_curves(plan.run_dir, read_metrics(plan.run_dir), read_validation_log(plan.run_dir),
                             title=plan.name)
    except Exception as exc:  # noqa: BLE001 - a missing plot must not fail a finished run
        log(f"warning: could not draw curves.png: {exc}")
        return
    log(f"curves: {redact(where)}")


def describe_plan(config: Config, plan: RunPlan) -> dict[str, Any]:
    """What ``--dry-run`` prints: run directory, split, stages, steps and resources."""

    split = LabelSplit.from_json(plan.split_json)
    t = config.train
    return {
        "run_name": plan.name, "run_dir": redact(plan.run_dir), "resuming": plan.resuming, "complete": plan.complete,
        "method": config.method, "stages": {s: config.stage(s).iterations for s in config.stages or []},
        "labelled_patients": list(split.labelled_patients), "unlabelled_patients": len(split.unlabelled_patients),
        "labelled_cases": len(split.labelled_cases), "unlabelled_cases": len(split.unlabelled_cases),
        "num_classes": plan.num_classes,
        "workers": t.num_workers, "cpus_per_worker": t.cpus_per_worker,
        "gpus_per_worker": t.gpus_per_worker if t.use_gpu else 0,
        "ray": redact(os.environ.get("RAY_ADDRESS", "")) or "a local Ray started for this run",
    }


def run_training(
    config: Config, *, stop_after_steps: int | None = None, log: Callable[[str], None] = print,
    callbacks: Sequence[Any] | None = None, dry_run: bool = False, follow: bool = True,
) -> dict[str, Any]:
    """Plan, fit and record one run; returns the summary also written to ``result.json``.

    ``stop_after_steps`` (testing aid) stops the workers after that many steps without a
    final checkpoint, as if the job had died; the summary then has ``interrupted=True``.
    ``callbacks``: Ray Train callbacks to attach instead of the default validation callback
    (:func:`validation_callbacks`); Tune sweeps pass their own, which also reports to Tune.
    ``dry_run``: make every check (store, split, stage needs, checkpoints), write nothing, start
    no Ray, and return the plan (:func:`describe_plan`). ``follow``: show progress and validation
    scores through ``log`` while the job runs (:mod:`action_ray.train.follow`).
    """
    if config.train.init_from:  # read on the driver first: a bad file fails here, before any write
        check_checkpoint(config.train.init_from, config.data.storage_options)
    tracking_target_of(config, config.train.resolved_storage_path)  # a bad tracking setting: before any write
    plan = plan_run(config, write=not dry_run)
    config = plan.config
    if plan.note:
        log(plan.note)
    if plan.resuming and not plan.complete:
        latest = latest_ray_checkpoint(plan.run_dir)
        if latest is not None:
            check_checkpoint(latest, config.data.storage_options)
    if dry_run:
        return describe_plan(config, plan)
    if plan.complete:
        result = read_result(plan.run_dir) or {}
        log(f"run {plan.name} is already complete ({redact(plan.run_dir)}); nothing to do")
        return result
    log(f"run {plan.name} -> {redact(plan.run_dir)}" + (" (resuming)" if plan.resuming else ""))
    if config.train.num_workers == 0:
        log("train.num_workers=0 is Ray Train's local mode (one process, no actors): Ray keeps no "
            "checkpoints there, so the run cannot resume or survive a failure; stages/<stage>/ "
            "still gets each stage's final checkpoint")
    if callbacks is None:
        callbacks = validation_callbacks(config, plan.run_dir, log)
    if plan.resuming:
        for callback in callbacks:  # a checkpoint recorded just before the driver died: score it now
            if hasattr(callback, "before_resume"):
                callback.before_resume(log)
    start_for_training(config.train.num_workers, config.train.cpus_per_worker, config.train.use_gpu, log)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    datasets, iter_kwargs = build_datasets(config, plan.split_json)
    settings = LoopSettings(
        config=config.to_dict(), label_split=plan.split_json, run_dir=plan.run_dir,
        num_classes=plan.num_classes, iter_kwargs=iter_kwargs, init_checkpoint=config.train.init_from,
        stop_after_steps=stop_after_steps, write_pid=not is_remote(plan.run_dir),
        tracking_target=tracking_target_of(config, plan.run_dir),
    )
    trainer = build_trainer(config, settings, datasets, plan.name, callbacks)
    import ray.train

    totals = {stage: config.stage(stage).iterations for stage in config.stages or []}
    follower = ReportFollower(plan.run_dir, totals, progress_mode_for_this_terminal(),
                              config.train.checkpoint_every, log) if follow else nullcontext()
    try:
        with follower:
            result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        cause, advice = describe_training_failure(exc)
        kept = latest_ray_checkpoint(plan.run_dir)
        resume = (f"continue with --resume, from {redact(kept)}" if kept else
                  "run again with --resume (no checkpoint was kept yet, so it starts over)")
        raise ActionRayError(
            f"training run {plan.name} failed: {cause}; {advice + '; ' if advice else ''}fix the cause and {resume}"
        ) from exc
    summary = dict(result.return_value or {})
    summary.update(run_name=plan.name, run_dir=plan.run_dir, stages=list(config.stages or []))
    summary.update(best_summary(plan.run_dir))
    _write_run_curves(plan, log)
    if not summary.get("interrupted"):
        summary["final_checkpoint"] = stage_checkpoint(plan.run_dir, str(summary.get("stage")))
        write_result(plan.run_dir, summary)
        if "best_checkpoint" in summary:
            log(f"best on validation: FT step {summary['best_ft_step']}, val Dice "
                f"{summary['best_val_dice']:.4f} -> {redact(summary['best_checkpoint'])}")
    return summary
