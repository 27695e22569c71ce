"""Validation during training: which FT checkpoints are scored, how, and the Ray callback.

The reported model is the last FT checkpoint; the best one *on the validation split* is kept
too (:mod:`action_ray.runs.best`), so ``action-ray evaluate RUN --checkpoint best`` can score
it. The test split is never read here: selection happens on ``val`` only.

Why a Ray Train callback: the training loop reports losses, not Dice, and its workers hold
the accelerators. :class:`ValidationCallback` runs in the Train controller right after a
report whose checkpoint Ray has already persisted, scores that checkpoint on the val split
(CPU, the evaluation code of ``action-ray evaluate``), appends a row to
``<run>/validation.jsonl`` (:mod:`action_ray.runs.logs`) and offers the checkpoint to the
:class:`~action_ray.runs.best.BestKeeper`, which copies it to ``<run>/best/`` when its mean val
Dice beats every earlier one. Training pauses while a validation runs (the report is a barrier).

Which checkpoints are scored (:class:`ValidationSchedule`): validation can only score
checkpoints, so ``eval.val_every`` is read on the ``train.checkpoint_every`` grid. An FT
checkpoint is validated when a multiple of ``val_every`` falls in the steps since the previous
checkpoint (so when ``val_every`` is a multiple of ``checkpoint_every``, exactly at the
multiples of ``val_every``; otherwise at the first checkpoint at or after each multiple), and
the FT stage's last checkpoint is always validated. ``val_every: 0`` turns validation off.
The evaluation reports of each validation go to ``<run>/validation/ft-<step>/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ray.train import UserCallback

from action_ray.config import Config
from action_ray.evaluation import evaluate_run
from action_ray.runs.best import BestKeeper
from action_ray.runs.files import read_json
from action_ray.runs.layout import META_FILE, join, validation_reports
from action_ray.runs.logs import append_validation_row, read_validation_log
from action_ray.runs.resolve import latest_ray_checkpoint
from action_ray.store import open_store
from action_ray.train.tracking import log_validation, tracking_target_of
from action_ray.urls import redact, with_protocol

#: Validation runs in the Train controller (and Tune's trial driver), which hold no GPU: Ray
#: hides the GPUs from them, and asking for one would wait on the GPU the run's own workers
#: hold while they sit in the report barrier. So validation is on CPU.
EVAL_DEVICE = "cpu"
#: The selection criterion: mean foreground Dice on the validation split, higher is better.
SCORE_KEY = "val_dice"


# ------------------------------------------------------------------------------ schedule
@dataclass(frozen=True)
class ValidationSchedule:
    """Which FT checkpoints get validated (see the module docstring for the rule)."""

    val_every: int
    checkpoint_every: int
    last_step: int

    @classmethod
    def of(cls, config: Config) -> "ValidationSchedule":
        return cls(config.eval.val_every, config.train.checkpoint_every, config.stage("ft").iterations)

    @property
    def enabled(self) -> bool:
        return self.val_every > 0

    def due(self, step: int) -> bool:
        """Whether the FT checkpoint of ``step`` is validated."""
        if not self.enabled:
            return False
        if step >= self.last_step:
            return True
        if step % self.checkpoint_every:  # not a checkpoint of the grid
            return False
        previous = max(step - self.checkpoint_every, 0)
        return step // self.val_every > previous // self.val_every

    def steps(self) -> list[int]:
        """The FT steps that will be validated, in order (the checkpoint grid plus the last step)."""
        if not self.enabled:
            return []
        grid = range(self.checkpoint_every, self.last_step, self.checkpoint_every)
        return [s for s in grid if self.due(s)] + [self.last_step]

    def describe(self) -> str:
        """One line for the training log, naming both keys when the grid moves the cadence."""
        steps = self.steps()
        shown = ", ".join(map(str, steps[:6])) + (f", ... ({len(steps)} in all)" if len(steps) > 6 else "")
        note = ""
        if self.enabled and self.val_every % self.checkpoint_every:
            rule = ("every FT checkpoint is scored" if self.val_every < self.checkpoint_every
                    else "the first checkpoint at or after each multiple is scored")
            note = (f" (eval.val_every={self.val_every} is not a multiple of train.checkpoint_every="
                    f"{self.checkpoint_every}: {rule}; set eval.val_every to a multiple of "
                    "train.checkpoint_every for an exact cadence)")
        return f"validation on the val split at FT steps {shown}{note}"


# ------------------------------------------------------------------------------- scoring
def summary_metrics(summary: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Flatten an ``evaluate_run`` summary: ``<prefix>_dice``, ``<prefix>_hd95_mm``,
    ``<prefix>_asd_vox`` and per class ``<prefix>_dice_<name>``, ``<prefix>_hd95_mm_<name>``
    (None -> NaN)."""

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
                        split: str, checkpoint: str, out_dir: str, device: str = EVAL_DEVICE) -> dict[str, float]:
    """Score one checkpoint of a run on ``split``; returns :func:`summary_metrics`."""

    summary = evaluate_run(run_dir, store, split=split, out_dir=out_dir, checkpoint=checkpoint,
                           storage_options=storage_options, device=device, progress=False)
    return summary_metrics(summary, split)


def labelled_val_cases(store: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """How many labelled cases the store's val split has (0: nothing to validate on)."""

    opened = open_store(store, dict(storage_options or {}) or None)
    return sum(1 for case in opened.list_cases(split="val") if case.has_label)


class CheckpointValidator:
    """Scores a checkpoint on the val split, logs the row and offers it to the :class:`BestKeeper`."""

    def __init__(self, run_dir: str, store: str, storage_options: Mapping[str, Any] | None = None,
                 device: str = EVAL_DEVICE, tracking_target: str | None = None) -> None:
        self.run_dir = str(run_dir).rstrip("/")
        self.store = str(store)
        self.storage_options = dict(storage_options or {})
        self.device = device
        self.tracking_target = tracking_target  # where train.tracking logs; the scores go there too

    def checkpoint_url(self, path: str) -> str:
        """A Ray checkpoint path as a URL of the run's filesystem (pyarrow drops ``s3://``)."""
        return with_protocol(self.run_dir, path)

    def validate(self, ft_step: int, checkpoint: str) -> dict[str, Any]:
        """Evaluate, keep as best if better, append the row; returns the row."""
        started = time.perf_counter()
        options = self.storage_options or None
        scores = evaluate_checkpoint(self.run_dir, self.store, options, split="val", checkpoint=checkpoint,
                                     out_dir=validation_reports(self.run_dir, ft_step),
                                     device=self.device)
        new_best = BestKeeper(self.run_dir, options).offer(ft_step, scores[SCORE_KEY], checkpoint)
        row = {"ft_step": int(ft_step), **scores, "checkpoint_path": checkpoint, "new_best": new_best,
               "validation_seconds": round(time.perf_counter() - started, 3)}
        append_validation_row(self.run_dir, row)
        try:
            log_validation(self.run_dir, self.tracking_target, row)
        except Exception as exc:  # noqa: BLE001 - the tracker is an observer; the row is already kept
            print(redact(f"[validation ft {ft_step}] not sent to the tracker ({type(exc).__name__}: {exc})")[:300])
        return row

    def try_validate(self, ft_step: int, checkpoint: str, log: Callable[[str], None] = print) -> dict[str, Any] | None:
        """`validate`, but a failure is logged, recorded as an ``error`` row and skipped: a broken
        val case or a store hiccup must not stop hours of training (the next one may succeed)."""
        try:
            return self.validate(ft_step, checkpoint)
        except Exception as exc:  # noqa: BLE001 - validation is an observer of training
            message = redact(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")[:300]
            log(f"[validation ft {ft_step}] failed ({message}); skipped, training continues")
            try:
                append_validation_row(self.run_dir, {"ft_step": int(ft_step), "error": message,
                                                     "checkpoint_path": checkpoint})
            except Exception as record_exc:  # noqa: BLE001
                log(f"[validation ft {ft_step}] could not record the failure either: {record_exc}")
            return None


def validate_missed_resume_checkpoint(validator: CheckpointValidator, due: Callable[[int], bool],
                                      log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Score the FT checkpoint a resumed run starts from if its validation never happened.

    Validation runs on the driver after Ray Train has recorded the checkpoint, so a driver killed
    in between leaves that checkpoint unscored; Ray resumes from it and no report brings it back,
    which would leave a hole in ``validation.jsonl`` and a checkpoint the best-on-validation
    choice never saw. Called before a resumed run trains; returns the row, or None when there is
    nothing to do (no checkpoint, not FT, not due, already validated) or the validation failed.
    """
    latest = latest_ray_checkpoint(validator.run_dir)
    if latest is None:
        return None
    try:
        meta = read_json(join(latest, META_FILE), validator.storage_options or None)
    except Exception:  # noqa: BLE001 - the resume preflight has already checked this checkpoint
        return None
    if not isinstance(meta, dict) or meta.get("stage") != "ft":
        return None
    step = int(meta["step"])
    if not due(step) or any(row.get("ft_step") == step for row in read_validation_log(validator.run_dir)):
        return None
    log(f"[validation ft {step}] the checkpoint this run resumes from was never validated (the run was "
        "interrupted in between): validating it first")
    return validator.try_validate(step, latest, log)


def ft_checkpoint_step(metrics: list[dict[str, Any]], checkpoint: Any) -> int | None:
    """The FT step of a report that carries a checkpoint, else None (P1/P2, or no checkpoint)."""
    if checkpoint is None or not metrics:
        return None
    row = metrics[0]
    if row.get("stage") != "ft":
        return None
    return int(row["step"])


# ------------------------------------------------------------------------------ callback
class ValidationCallback(UserCallback):
    """Ray Train callback: validate the FT checkpoints the schedule names (module docstring)."""

    def __init__(self, validator: CheckpointValidator, schedule: ValidationSchedule) -> None:
        self.validator = validator
        self.schedule = schedule

    @classmethod
    def for_run(cls, config: Config, run_dir: str) -> "ValidationCallback":
        validator = CheckpointValidator(run_dir, str(config.data.store), config.data.storage_options,
                                        tracking_target=tracking_target_of(config, run_dir))
        return cls(validator, ValidationSchedule.of(config))

    def before_resume(self, log: Callable[[str], None] = print) -> None:
        """A resumed run first scores its resume checkpoint if that was never validated."""
        validate_missed_resume_checkpoint(self.validator, self.schedule.due, log)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        step = ft_checkpoint_step(metrics, checkpoint)
        if step is None or not self.schedule.due(step):
            return
        row = self.validator.try_validate(step, self.validator.checkpoint_url(checkpoint.path))
        if row is None:
            return
        print(f"[validation ft {step}] val Dice {row[SCORE_KEY]:.4f}" + (" | new best" if row["new_best"] else ""),
              flush=True)
