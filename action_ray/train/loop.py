"""The per-worker training function: plain PyTorch plus the three Ray Train calls.

``train_loop_per_worker`` is what ``TorchTrainer`` runs on every worker. It gets its dataset
shards (``ray.train.get_dataset_shard``), builds the stage state (`build_state`), runs the
stage step functions and calls ``ray.train.report`` every ``train.report_every`` steps, with a
checkpoint every ``train.checkpoint_every`` steps and at the end of every stage. Everything
between those calls is the ordinary, Ray-free code of `run_stages`.

Why no ``prepare_model``/DDP: `ActionModel` is several networks whose trainable set changes per
stage, and the steps call the student several times per iteration. The step functions average
gradients themselves (``steps.common.apply_update`` → one flat ``all_reduce``), so this loop
must not wrap the model: gradients are averaged across ranks exactly once, inside the step.

One ``fit`` trains every stage of the run (P1 → P2 → FT): the checkpoint records the stage,
so Ray's retry after a worker failure (``FailureConfig``) and a resumed run (same run name,
``get_checkpoint()``) both continue inside the right stage, including at a stage boundary
(a ``stage_done`` checkpoint is followed by the hand-off to the next stage).

Data position: each stage restarts its streams at epoch 0; a checkpoint records (epoch,
batches taken) and a resumed worker skips that many batches of that epoch. With
``train.deterministic`` the streams are ordered and seeded (see `trainer.data_config`), so the
skipped batches are the same ones and a resumed run repeats the uninterrupted loss trajectory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

from action_ray.config import Config, config_from_dict
from action_ray.data.labels import loss_targets
from action_ray.distributed import rank as current_rank
from action_ray.distributed import world_size
from action_ray.errors import ConfigError
from action_ray.ray_session import current_node
from action_ray.runs.checkpoint import (
    Checkpoint,
    DataPosition,
    capture_rng,
    load_checkpoint,
    load_checkpoint_from,
    restore_rng,
    save_checkpoint,
    upload_directory,
)
from action_ray.runs.files import write_file
from action_ray.runs.layout import stage_checkpoint, worker_pid_file
from action_ray.runs.logs import announce, write_metrics
from action_ray.train.progress import StageProgress
from action_ray.train.state import (
    build_state,
    handoff_p1_to_p2,
    handoff_p2_to_ft,
    stream_seed,
)
from action_ray.train.steps import bind_step
from action_ray.train.steps.common import crop_batch
from action_ray.train.steps.diagnostics import take as take_diagnostics
from action_ray.train.tracking import WorkerTracker, open_worker_tracker

Batch = dict[str, torch.Tensor]
#: the module whose logger writes Ray Train 2.60's per-report INFO line ("Reporting training
#: result N: ..."); that logger is named after the module's file path, not its dotted name
RAY_TRAIN_REPORT_MODULE = "ray.train.v2._internal.execution.context"


def quiet_report_lines() -> None:
    """Raise Ray Train's per-report logger to WARNING in this worker.

    Ray Train logs every ``ray.train.report`` at INFO through Ray's own console handler (its
    ``LoggingConfig`` filters only Train's handlers): a long line per report that buries the
    progress lines. Nothing happens if a Ray release moves the module.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(RAY_TRAIN_REPORT_MODULE)
    except (ImportError, ValueError):
        return
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)
#: A function that yields (position after the batch, raw shard batches) for a stage.
BatchSource = Callable[[str, DataPosition], Iterator[tuple[DataPosition, dict[str, Batch]]]]


@dataclass
class LoopSettings:
    """What the driver hands every worker (``train_loop_config``), besides the datasets.

    ``stop_after_steps`` is a debugging/testing aid: the worker stops after that many optimiser
    steps *in this session*, without a final checkpoint, as if the job had been killed.
    """

    config: dict[str, Any]
    label_split: str
    run_dir: str
    num_classes: int
    iter_kwargs: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: str | None = None
    tracking_target: str | None = None  # MLflow URI / TensorBoard folder (train.tracking), resolved by the driver
    stop_after_steps: int | None = None
    write_pid: bool = True


# ------------------------------------------------------------------------------- batches
def stage_batch_sizes(config: Config, stage: str) -> tuple[int, int]:
    """(labelled, unlabelled) slices per worker batch of ``stage`` for ``config.method``."""
    d = config.data
    if stage in ("p1", "p2"):
        return d.pretrain_labelled_batch, d.pretrain_unlabelled_batch
    if config.method == "supervised":
        return d.ft_labelled_batch, 0
    return d.ft_labelled_batch, d.ft_unlabelled_batch


def compose_batch(stage: str, parts: dict[str, Batch]) -> Batch:
    """Shard batches → the layout the stage step expects (see ``train.steps``).

    parts["labelled"]: {"image": (B_l, 1, *S), "label": (B_l, *S)}; parts["unlabelled"]:
    {"image": (B_u, 1, *S)} (absent when B_u = 0). P1/P2 get one batch ``[labelled | unlabelled]``
    with a ``labelled`` flag per row; FT and the baselines get ``image_l/label_l/image_u``.
    Labels become loss targets here (``data.labels.loss_targets``: int64, the stream's
    "no label" value as ``IGNORE_LABEL``).
    """
    lab = parts["labelled"]
    unl = parts.get("unlabelled")
    if stage in ("p1", "p2"):
        images, labels = [lab["image"]], [loss_targets(lab["label"])]
        flags = [torch.ones(lab["image"].shape[0], dtype=torch.bool)]
        if unl is not None:
            u = unl["image"]
            images.append(u)
            labels.append(torch.zeros((u.shape[0], *u.shape[2:]), dtype=torch.long))
            flags.append(torch.zeros(u.shape[0], dtype=torch.bool))
        return {"image": torch.cat(images), "label": torch.cat(labels), "labelled": torch.cat(flags)}
    batch = {"image_l": lab["image"], "label_l": loss_targets(lab["label"])}
    if unl is not None:
        batch["image_u"] = unl["image"]
    return batch


def shard_batches(
    shards: Mapping[str, Any], config: Config, iter_kwargs: Mapping[str, Any]
) -> BatchSource:
    """A `BatchSource` over Ray ``DataIterator`` shards, endless over epochs.

    One epoch ends when either stream runs out (the labelled stream is oversampled to be at
    least as long as the unlabelled one). With a local shuffle buffer and
    ``train.deterministic`` the buffer seed is derived from (seed, stage, epoch).
    """

    def batches(stage: str, start: DataPosition) -> Iterator[tuple[DataPosition, dict[str, Batch]]]:
        n_lab, n_unl = stage_batch_sizes(config, stage)
        if n_unl and shards.get("unlabelled") is None:
            raise ConfigError(
                f"stage {stage} of method={config.method} needs unlabelled data, but every train "
                "patient is labelled; lower data.label_ratio / data.labelled_patients"
            )
        epoch, skip = start.epoch, start.batches
        while True:
            kwargs = dict(iter_kwargs)
            if config.train.deterministic and kwargs.get("local_shuffle_buffer_size"):
                kwargs["local_shuffle_seed"] = (config.train.seed * 1000003 + epoch * 31 + len(stage)) % 2**31
            streams = {"labelled": shards["labelled"].iter_torch_batches(batch_size=n_lab, drop_last=True, **kwargs)}
            if n_unl:
                streams["unlabelled"] = shards["unlabelled"].iter_torch_batches(
                    batch_size=n_unl, drop_last=True, **kwargs)
            taken = 0
            for rows in zip(*streams.values()):
                taken += 1
                if taken <= skip:
                    continue
                yield DataPosition(epoch, taken), dict(zip(streams.keys(), rows))
            if taken == 0:
                raise ConfigError(
                    f"stage {stage}: an epoch gave no full batch of {n_lab} labelled + {n_unl} "
                    "unlabelled slices per worker; use smaller batches or fewer workers"
                )
            epoch, skip = epoch + 1, 0

    return batches


# ------------------------------------------------------------------------ replica checks
def replica_digest(state) -> str:
    """SHA-256 over the trainable-or-not parameters and bank buffers (not BN statistics,
    which are per-rank by design). Equal on every rank when gradients are averaged and the
    global bank enqueues the same keys everywhere."""
    digest = hashlib.sha256()
    tensors = [p.detach() for p in state.model.parameters()]
    for bank in state.banks().values():
        tensors += [b.detach() for b in bank.buffers()]
    for tensor in tensors:
        digest.update(tensor.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _gather_objects(obj: Any) -> list[Any]:
    """``all_gather_object`` when distributed, else ``[obj]``."""
    import torch.distributed as dist

    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------- the stages
@dataclass
class Reporter:
    """Where a worker's reports go; the Ray version is `RayReporter`."""

    rank: int = 0

    def report(self, metrics: dict[str, Any], history: list[dict[str, Any]],
               checkpoint: Checkpoint | None) -> None:  # pragma: no cover
        """Called on every rank at the same steps; ``history`` is every report of the run so far."""
        raise NotImplementedError

    def announce(self, line: str) -> None:
        """Rank 0 only: a line for the person following the run (a stage starting or restarting)."""


def _next_stage_state(state, stage: str):
    if (state.stage, stage) == ("p1", "p2"):
        return handoff_p1_to_p2(state)
    if (state.stage, stage) == ("p2", "ft"):
        return handoff_p2_to_ft(state)
    raise ConfigError(f"cannot hand over from stage {state.stage} to {stage}; stages run p1 -> p2 -> ft")


@torch.no_grad()
def broadcast_from_rank0(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps a model).

    Called at every stage hand-off. The hand-offs re-initialise heads under a seed shared by
    all ranks, so the parameters already agree; this is the guarantee DDP would give (cheap,
    once per stage), and it also starts every rank from rank 0's BN statistics. Without
    equal starting weights the replicas would never agree again (gradients are averaged,
    differences are not).
    """
    import torch.distributed as dist

    if world_size() == 1:
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _restore(state, checkpoint: Checkpoint, rank: int) -> None:
    """Load a checkpoint into a state built for its stage, with this rank's own RNG streams.

    A rank the checkpoint has no streams for (a run resumed on more workers than it was saved
    with) gets fresh ones, seeded from the run seed, its rank and the step, so that it never
    replays another rank's augmentations.
    """

    state.load_state_dict(checkpoint.train_state)
    if rank < len(checkpoint.rank_rng):
        mine = checkpoint.rank_rng[rank]
        state.generator.set_state(mine["generator"])
        restore_rng(mine["rng"])
        return
    purpose = f"resumed/{checkpoint.stage}/{checkpoint.step}"
    state.generator.manual_seed(stream_seed(state.config.train.seed, rank, f"augment/{purpose}"))
    torch.manual_seed(stream_seed(state.config.train.seed, rank, f"dropout/{purpose}"))


def _starting_state(config: Config, settings: LoopSettings, device: torch.device, rank: int,
                    resume: Checkpoint | None, init: Checkpoint | None):
    """(state or None, data position, index of the first stage to train) for a new session."""

    stages = list(config.stages or [])
    if resume is not None:
        if resume.stage not in stages:
            raise ConfigError(f"the checkpoint is in stage {resume.stage}, which this run does not train ({stages})")
        state = build_state(config, settings.num_classes, device, resume.stage)
        _restore(state, resume, rank)
        return state, resume.data_position, stages.index(resume.stage) + (1 if resume.stage_done else 0)
    if init is not None:
        state = build_state(config, settings.num_classes, device, init.stage)
        _restore(state, init, rank)
        return state, DataPosition(), 0
    return None, DataPosition(), 0


def _window_metrics(state, position: DataPosition, sums: dict[str, torch.Tensor], steps: int,
                    seconds: float) -> dict[str, Any]:
    """One report: mean losses over the window (the only host sync), lr, speed, replica check."""
    metrics = {
        "stage": state.stage,
        "step": state.step,
        "epoch": position.epoch,
        **{name: float(total) / steps for name, total in sums.items()},
        "lr": float(state.optimizer.param_groups[0]["lr"]),
        "it_per_s": steps / seconds if seconds > 0 else 0.0,
        "time": time.time(),
    }
    gathered = _gather_objects((replica_digest(state), current_node()))
    metrics["replicas_identical"] = len({digest for digest, _ in gathered}) == 1
    metrics["nodes"] = ",".join(node[:12] for _, node in gathered)  # rank order; where each rank ran
    return metrics


def _checkpoint(state, position: DataPosition, settings: LoopSettings, history: list[dict[str, Any]],
                stage_done: bool) -> Checkpoint:
    """Everything to continue from here, with the RNG streams of every rank (a collective)."""
    rngs = _gather_objects({"generator": state.generator.get_state(), "rng": capture_rng()})
    return Checkpoint(
        stage=state.stage, step=state.step, train_state=state.state_dict(), rank_rng=rngs,
        data_position=position, config=settings.config, label_split=settings.label_split,
        metrics=list(history), stage_done=stage_done,
    )


def run_stages(
    config: Config,
    settings: LoopSettings,
    batches: BatchSource,
    reporter: Reporter,
    device: torch.device,
    resume: Checkpoint | None = None,
    init: Checkpoint | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every stage of ``config.stages`` from ``resume`` (or ``init``, or scratch).

    ``init`` is the final checkpoint of the stage before the first one in ``config.stages``
    (``train.init_from``). Every rank reports at the same steps (``report`` is a barrier).
    Returns a summary ``{"stage", "step", "interrupted"}``.
    """

    rank = current_rank()
    history: list[dict[str, Any]] = list(resume.metrics) if resume else []
    state, position, first = _starting_state(config, settings, device, rank, resume, init)
    steps_this_session = 0
    for stage in list(config.stages or [])[first:]:
        if state is None:
            state = build_state(config, settings.num_classes, device, stage)
        elif state.stage != stage:
            state = _next_stage_state(state, stage)
            broadcast_from_rank0(state.model)
            position = DataPosition()
        iterations = config.stage(stage).iterations
        step_fn = bind_step(config, stage)
        stream = batches(stage, position)
        sums: dict[str, torch.Tensor] = {}
        window_start, window_steps = time.perf_counter(), 0
        if rank == 0 and state.step < iterations:
            start = (f"stage {stage}: steps {state.step + 1}..{iterations} from epoch {position.epoch}, "
                     f"batch {position.batches}")
            log(start)
            reporter.announce(start)
        progress = StageProgress("lines", stage, state.step, iterations, log,
                                 enabled=rank == 0 and state.step < iterations)
        while state.step < iterations:
            if settings.stop_after_steps is not None and steps_this_session >= settings.stop_after_steps:
                progress.close()
                return {"stage": stage, "step": state.step, "interrupted": True}
            position, parts = next(stream)
            losses = step_fn(state, crop_batch(state, compose_batch(stage, parts), config.data))
            steps_this_session += 1
            window_steps += 1
            progress.advance(state.step)
            for name, value in losses.items():
                sums[name] = sums[name] + value if name in sums else value
            done = state.step >= iterations
            if state.step % config.train.report_every and not done:
                continue
            metrics = _window_metrics(state, position, sums, window_steps, time.perf_counter() - window_start)
            metrics.update(take_diagnostics(state.extras))
            history.append(metrics)
            checkpoint = None
            if done or state.step % config.train.checkpoint_every == 0:
                checkpoint = _checkpoint(state, position, settings, history, stage_done=done)
            progress.report({name: metrics[name] for name in sums}, metrics["it_per_s"], checkpoint is not None)
            reporter.report(metrics, history, checkpoint)
            sums, window_start, window_steps = {}, time.perf_counter(), 0
        progress.close()
    if state is None:
        return {"stage": None, "step": 0, "interrupted": False}
    return {"stage": state.stage, "step": state.step, "interrupted": False}


# ------------------------------------------------------------------------------- Ray glue
class RayReporter(Reporter):
    """``ray.train.report`` on every rank (a barrier); rank 0 attaches the checkpoint, writes
    ``metrics.jsonl`` and, at a stage end, a copy of the checkpoint to ``stages/<stage>``."""

    def __init__(self, rank: int, run_dir: str, tracker: WorkerTracker | None = None) -> None:
        super().__init__(rank)
        self.run_dir = run_dir
        self.tracker = tracker or WorkerTracker("none")

    def report(self, metrics: dict[str, Any], history: list[dict[str, Any]],
               checkpoint: Checkpoint | None) -> None:
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        write_metrics(self.run_dir, history)
        self.tracker.log(metrics)
        if checkpoint is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="action-ray-ckpt-") as tmp:
            save_checkpoint(tmp, checkpoint)
            if checkpoint.stage_done:
                upload_directory(tmp, stage_checkpoint(self.run_dir, checkpoint.stage))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def announce(self, line: str) -> None:
        """Add ``line`` to ``<run>/announcements.jsonl``, which the driver shows as it arrives
        (:mod:`action_ray.train.follow`); kept across restarts."""
        announce(self.run_dir, line)


def worker_device(config: Config) -> torch.device:
    """The device this Train worker computes on: its GPU under ``train.use_gpu``, else the CPU."""
    if config.train.use_gpu:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Entry point run by ``TorchTrainer`` on every worker (``train_loop_config`` = `LoopSettings`)."""
    import ray.train

    settings = LoopSettings(**loop_config)
    config = config_from_dict(settings.config)
    quiet_report_lines()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if not config.train.use_gpu:
        torch.set_num_threads(max(1, int(config.train.cpus_per_worker)))
    if settings.write_pid and "://" not in settings.run_dir:
        write_file(worker_pid_file(settings.run_dir, rank), str(os.getpid()))
    resume = init = None
    ray_checkpoint = ray.train.get_checkpoint()
    if ray_checkpoint is not None:
        with ray_checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
    elif settings.init_checkpoint:
        init = load_init_checkpoint(settings.init_checkpoint)
    shards = {"labelled": ray.train.get_dataset_shard("labelled")}
    try:
        shards["unlabelled"] = ray.train.get_dataset_shard("unlabelled")
    except (KeyError, ValueError):
        shards["unlabelled"] = None
    batches = shard_batches(shards, config, settings.iter_kwargs)
    tracker = open_worker_tracker(config.train.tracking, settings.tracking_target, config,
                                  settings.run_dir, rank)
    reporter = RayReporter(rank, settings.run_dir, tracker)
    try:
        return run_stages(config, settings, batches, reporter, worker_device(config), resume=resume, init=init)
    finally:
        tracker.close()


def load_init_checkpoint(url: str) -> Checkpoint:
    """A previous stage's final checkpoint (``train.init_from``), local or remote."""
    return load_checkpoint_from(url)


def settings_dict(settings: LoopSettings) -> dict[str, Any]:
    """`LoopSettings` as the plain dict passed through ``train_loop_config``."""
    return asdict(settings)
