"""Validation during training and the best-on-validation checkpoint (method.md §8.1).

The reported model is the last FT checkpoint; the best one *on the validation split* is kept
too, so ``action-ray evaluate RUN --checkpoint best`` can score it. The test split is never
read here: selection happens on ``val`` only.

Why a Ray Train callback: the training loop reports losses, not Dice, and its workers hold
the accelerators. :class:`ValidationCallback` runs in the Train controller right after a
report whose checkpoint Ray has already persisted, scores that checkpoint on the val split
(CPU, the evaluation code of ``action-ray evaluate``), appends a row to
``<run>/validation.jsonl`` and, when the mean val Dice beats every earlier one, copies the
checkpoint to ``<run>/best/``. Ray deletes periodic checkpoints beyond ``train.num_to_keep``,
hence the copy. Training pauses while a validation runs (the report is a barrier).

Which checkpoints are scored (:class:`ValidationSchedule`): validation can only score
checkpoints, so ``eval.val_every`` is read on the ``train.checkpoint_every`` grid. An FT
checkpoint is validated when a multiple of ``val_every`` falls in the steps since the previous
checkpoint (so when ``val_every`` is a multiple of ``checkpoint_every``, exactly at the
multiples of ``val_every``; otherwise at the first checkpoint at or after each multiple), and
the FT stage's last checkpoint is always validated. ``val_every: 0`` turns validation off.

Files written in the run directory (local or ``s3://``)::

    validation.jsonl           one row per validation: ft_step, val_dice, per-class scores, ...
    validation/ft-<step>/      the evaluation reports of that validation
    best/{state.pt,meta.json}  copy of the best checkpoint (the layout evaluation reads),
    best/best.json             with {ft_step, val_dice, source, checkpoint}: what it holds
    best.json                  a copy of that record at the top, for people and tools

Crash safety: locally, ``best/`` is assembled as ``.best-new/`` and swapped in by renames
(a crash mid-swap is repaired from ``.best-old/`` the next time the keeper looks); on object
stores, where a directory cannot be renamed, ``best/meta.json`` is removed first and written
last, so an interrupted copy reads as *no* best rather than a half-written one.
The record travels inside ``best/`` (so it always describes the weights beside it); a resumed
run reads it, so a worse later checkpoint never replaces a better earlier one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from ray.train import UserCallback

from action_ray.config import Config
from action_ray.evaluation.runs import BEST_RECORD
from action_ray.files import write_atomic
from action_ray.train.checkpoint import META_FILE, STATE_FILE
from action_ray.train.tracking import log_validation, tracking_target_of
from action_ray.urls import filesystem_for, is_remote, redact

#: One JSON line per validated checkpoint.
VALIDATION_LOG = "validation.jsonl"
#: The kept best checkpoint (``evaluate --checkpoint best`` reads it); ``BEST_RECORD`` names
#: the record of what it is, inside it and at the top of the run.
BEST_DIR = "best"
#: Local staging names of the atomic swap of ``best/``.
BEST_NEW = ".best-new"
BEST_OLD = ".best-old"
#: The files of a checkpoint directory, completion marker last.
CHECKPOINT_FILES = (STATE_FILE, META_FILE)
MARKER = META_FILE
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


# ----------------------------------------------------------------------------- best keeper
@dataclass(frozen=True)
class BestRecord:
    """What ``best.json`` holds: the FT step and val Dice of ``best/``, and where it came from."""

    ft_step: int
    val_dice: float
    source: str
    checkpoint: str


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


class BestKeeper:
    """Keeps ``<run>/best/`` equal to the validated checkpoint with the highest val Dice.

    Stateless between calls: every :meth:`offer` reads ``best.json`` again, so a resumed run (a
    new callback, a new controller) continues from what the previous session kept.
    """

    def __init__(self, run_dir: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.run_dir = str(run_dir).rstrip("/")
        self.storage_options = dict(storage_options or {}) or None
        self.fs, self.root = filesystem_for(self.run_dir, self.storage_options)
        self.remote = is_remote(self.run_dir)

    @property
    def best_url(self) -> str:
        return _join(self.run_dir, BEST_DIR)

    def current(self, repair: bool = False) -> BestRecord | None:
        """The kept best, or None (none yet, or ``best/`` lost its marker in a crash).

        The record is read from ``best/`` itself (written with the checkpoint, swapped in with
        it), so it always describes the weights next to it. ``repair`` (the writer only) first
        finishes a swap a crash interrupted; readers such as ``evaluate`` must not, since the
        writer may be assembling ``.best-new/`` at that moment.
        """
        if repair:
            self._repair()
        best = _join(self.root, BEST_DIR)
        if not self.fs.exists(_join(best, MARKER)) or not self.fs.exists(_join(best, BEST_RECORD)):
            return None
        with self.fs.open(_join(best, BEST_RECORD), "r") as handle:
            return BestRecord(**json.loads(handle.read()))

    def offer(self, ft_step: int, val_dice: float, source: str) -> bool:
        """Keep the checkpoint at ``source`` as best if ``val_dice`` beats the kept one.

        A tie keeps the earlier checkpoint; a NaN score is never kept. Returns whether ``best/``
        now holds ``source``.
        """
        if val_dice is None or math.isnan(val_dice):
            return False
        kept = self.current(repair=True)
        if kept is not None and not val_dice > kept.val_dice:
            return False
        record = json.dumps(asdict(BestRecord(int(ft_step), float(val_dice), str(source), self.best_url)), indent=2)
        sfs, sroot = filesystem_for(source, self.storage_options)
        if not sfs.exists(_join(sroot, MARKER)):
            raise FileNotFoundError(f"no complete checkpoint at {redact(source)} (missing {MARKER})")
        if self.remote:
            self._copy_remote(sfs, sroot, record)
        else:
            self._copy_local(sfs, sroot, record)
        with self.fs.open(_join(self.root, BEST_RECORD), "w") as handle:  # a copy at the top, for people
            handle.write(record)
        return True

    # ---- copying
    def _copy_remote(self, sfs, sroot: str, record: str) -> None:
        """Object stores cannot rename a directory: invalidate, copy the state, marker last."""
        best = _join(self.root, BEST_DIR)
        if self.fs.exists(_join(best, MARKER)):
            self.fs.rm(_join(best, MARKER))

        def copy(name: str) -> None:
            with sfs.open(_join(sroot, name), "rb") as src, self.fs.open(_join(best, name), "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 2**20)

        copy(STATE_FILE)
        with self.fs.open(_join(best, BEST_RECORD), "w") as handle:
            handle.write(record)
        copy(MARKER)  # the completion marker last

    def _copy_local(self, sfs, sroot: str, record: str) -> None:
        """Assemble ``.best-new/``, then swap it in with renames; no partial ``best/`` ever."""
        new, old, best = (os.path.join(self.root, name) for name in (BEST_NEW, BEST_OLD, BEST_DIR))
        shutil.rmtree(new, ignore_errors=True)
        try:
            os.makedirs(new)
            for name in CHECKPOINT_FILES:
                sfs.get_file(_join(sroot, name), os.path.join(new, name))
            with open(os.path.join(new, BEST_RECORD), "w") as handle:
                handle.write(record)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(best):
            os.rename(best, old)
        os.rename(new, best)
        shutil.rmtree(old, ignore_errors=True)

    def _repair(self) -> None:
        """Undo a local swap that a crash interrupted between its two renames; drop leftovers."""
        if self.remote:
            return
        new, old, best = (os.path.join(self.root, name) for name in (BEST_NEW, BEST_OLD, BEST_DIR))
        if os.path.isdir(old) and not os.path.exists(best):
            os.rename(old, best)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)


def read_best(run_dir: str, storage_options: Mapping[str, Any] | None = None) -> BestRecord | None:
    """The best-on-validation checkpoint a run kept, or None."""
    return BestKeeper(run_dir, storage_options).current()


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
    from action_ray.evaluation import evaluate_run

    summary = evaluate_run(run_dir, store, split=split, out_dir=out_dir, checkpoint=checkpoint,
                           storage_options=storage_options, device=device, progress=False)
    return summary_metrics(summary, split)


def append_validation_row(run_dir: str, row: Mapping[str, Any]) -> None:
    """Record one validation in ``validation.jsonl``, replacing an earlier row of the same FT step.

    A worker group that Ray Train restarts from a checkpoint reports the steps after it again;
    their validations then replace the first ones instead of appearing twice. The file is
    rewritten whole through a temporary name (object stores have no append anyway).
    """
    fs, root = filesystem_for(run_dir)
    path = _join(root, VALIDATION_LOG)
    rows = [r for r in read_validation_log(run_dir) if r.get("ft_step") != row.get("ft_step")]
    rows.append(dict(row))
    rows.sort(key=lambda r: int(r.get("ft_step", 0)))
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not is_remote(run_dir):
        write_atomic(path, text)
        return
    with fs.open(path, "w") as handle:
        handle.write(text)


def read_validation_log(run_dir: str) -> list[dict[str, Any]]:
    """Every validation of this run, one row per FT step in step order (failed ones carry ``error``)."""
    fs, root = filesystem_for(run_dir)
    path = _join(root, VALIDATION_LOG)
    if not fs.exists(path):
        return []
    with fs.open(path, "r") as handle:
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


def labelled_val_cases(store: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """How many labelled cases the store's val split has (0: nothing to validate on)."""
    from action_ray.store import open_store

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
        if is_remote(self.run_dir) and "://" not in path:
            return f"{self.run_dir.split('://', 1)[0]}://{path}"
        return path

    def validate(self, ft_step: int, checkpoint: str) -> dict[str, Any]:
        """Evaluate, keep as best if better, append the row; returns the row."""
        started = time.perf_counter()
        options = self.storage_options or None
        scores = evaluate_checkpoint(self.run_dir, self.store, options, split="val", checkpoint=checkpoint,
                                     out_dir=_join(self.run_dir, "validation", f"ft-{ft_step:06d}"),
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

    def after_report(self, run_context, metrics, checkpoint) -> None:
        step = ft_checkpoint_step(metrics, checkpoint)
        if step is None or not self.schedule.due(step):
            return
        row = self.validator.try_validate(step, self.validator.checkpoint_url(checkpoint.path))
        if row is None:
            return
        print(f"[validation ft {step}] val Dice {row[SCORE_KEY]:.4f}" + (" | new best" if row["new_best"] else ""),
              flush=True)
