"""Every file and folder name of a run folder, and the paths built from a run root.

Why one module: training writes these names, and evaluation, prediction, sweeps, the progress
follower and the curves read them; a name spelt in two places drifts. A run root is a local
path or a URL (``s3://bucket/runs/r1``); :func:`join` works on both, and on the
protocol-less paths fsspec hands back. The layout (written by :mod:`action_ray.train`)::

    <run>/config.yaml, label_split.json           the run's settings and labelled subset
    <run>/metrics.jsonl                           every report, rewritten by rank 0
    <run>/announcements.jsonl                     lines rank 0 shows the driver (stage starts)
    <run>/validation.jsonl, validation/ft-<step>/ one row and the reports of each validation
    <run>/stages/<stage>/{state.pt, meta.json}    final checkpoint of each stage
    <run>/best/{state.pt, meta.json, best.json}   best-on-validation checkpoint, if kept
    <run>/best.json                               a copy of that record, for people and tools
    <run>/checkpoint_*/{state.pt, meta.json}      Ray Train's periodic checkpoints
    <run>/checkpoint_manager_snapshot.json        Ray Train's record of its latest checkpoint
    <run>/result.json, curves.png                 once the run has finished
    <run>/eval-<split>-<last|best|custom>/        ``action-ray evaluate``'s reports, by default
    <run>/test/, validation/last/                 a sweep trial's test (and fallback val) reports
    <run>/tracking.json, tensorboard/             experiment tracking, when on
    <run>/workers/rank<N>.pid                     process ids of the workers (local runs)
"""

from __future__ import annotations

#: A checkpoint directory: the training state, and the small summary that is written last
#: and marks the directory complete.
STATE_FILE = "state.pt"
META_FILE = "meta.json"
#: The files of a checkpoint directory, completion marker last.
CHECKPOINT_FILES = (STATE_FILE, META_FILE)

CONFIG_FILE = "config.yaml"
LABEL_SPLIT_FILE = "label_split.json"
METRICS_LOG = "metrics.jsonl"
#: One JSON object per line: what rank 0 announces to the driver (each stage start, also
#: after a restart).
ANNOUNCEMENTS_LOG = "announcements.jsonl"
#: One JSON line per validated checkpoint.
VALIDATION_LOG = "validation.jsonl"
VALIDATION_DIR = "validation"
#: A sweep trial's evaluation of its last checkpoint on the test split (``tune.test_split``).
TEST_REPORTS_DIR = "test"
RESULT_FILE = "result.json"
CURVES_FILE = "curves.png"
TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
WORKERS_DIR = "workers"

STAGES_DIR = "stages"
#: The kept best checkpoint (``evaluate --checkpoint best`` reads it).
BEST_DIR = "best"
#: Inside ``best/`` (and copied to ``<run>/best.json``): ft_step, val_dice, source of the best.
BEST_RECORD = "best.json"
#: Local staging names of the atomic swap of ``best/``.
BEST_NEW = ".best-new"
BEST_OLD = ".best-old"

#: Ray Train names its periodic checkpoint folders ``checkpoint_<timestamp>``.
RAY_CHECKPOINT_PREFIX = "checkpoint_"
RAY_CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path, a URL or an fsspec path alike."""
    return "/".join([str(base).rstrip("/"), *parts])


def run_dir_of(storage_path: str, run_name: str) -> str:
    """The folder of run ``run_name`` under ``train.storage_path`` (Ray Train's own choice)."""
    return join(storage_path, run_name)


def stage_checkpoint(run_dir: str, stage: str) -> str:
    """The final checkpoint of ``stage``."""
    return join(run_dir, STAGES_DIR, stage)


def best_checkpoint(run_dir: str) -> str:
    """The best-on-validation checkpoint."""
    return join(run_dir, BEST_DIR)


def validation_reports(run_dir: str, ft_step: int) -> str:
    """The folder of the evaluation reports of the validation at ``ft_step``."""
    return join(run_dir, VALIDATION_DIR, f"ft-{ft_step:06d}")


def worker_pid_file(run_dir: str, rank: int) -> str:
    """Where the worker of ``rank`` records its process id (local runs only)."""
    return join(run_dir, WORKERS_DIR, f"rank{rank}.pid")


def evaluation_reports(run_dir: str, split: str, label: str) -> str:
    """Where ``action-ray evaluate`` writes by default: ``eval-<split>-<last|best|custom>``."""
    return join(run_dir, f"eval-{split}-{label}")
