"""``evaluate_run``: a run's student on one split of a store → metrics.csv, summaries, montage.

Protocol (method.md §6 and §8.1): every labelled case of the split is predicted whole (slice-wise
in 2-D, sliding window in 3-D, see ``inference.py``), then scored per foreground class on the
3-D volume with Dice, Jaccard, HD95 and ASD in mm (stored spacing) and in voxels. Means are
over cases per class, then over classes. The checkpoint is chosen before any test case is
read (``last`` by default; ``best`` is whatever training selected on *validation*), so the
test split never influences which model is reported. Unlabelled cases of the split cannot be
scored; they are skipped and listed in the summary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from action_ray.errors import ConfigError, StoreError
from action_ray.evaluation.inference import (
    InferenceSettings,
    Network,
    inference_settings,
    predict_case,
)
from action_ray.evaluation.montage import MontageCase, montage_case, write_montage
from action_ray.evaluation.report import build_summary, case_rows, write_reports
from action_ray.metrics import EMPTY_CONVENTIONS
from action_ray.runs.layout import CURVES_FILE, evaluation_reports, join
from action_ray.runs.resolve import (
    checkpoint_selection,
    load_student,
    resolve_checkpoint,
)
from action_ray.store import open_store
from action_ray.store.schema import SPLITS
from action_ray.urls import filesystem_for, redact

log = logging.getLogger(__name__)

OVERLAYS_PNG = "overlays.png"


@dataclass
class ScoredCases:
    """Rows of ``metrics.csv`` for the scored cases, montage rows, the unlabelled skipped, and
    the cases that could not be read (``{"case_id", "error"}``: a missing or corrupt chunk)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    montage: list[MontageCase] = field(default_factory=list)
    skipped_unlabelled: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)


def foreground_classes(store_classes: Mapping[int, str], num_classes: int) -> dict[int, str]:
    """The store's classes except background, checked against the network's output count."""
    classes = {int(c): name for c, name in store_classes.items() if int(c) != 0}
    if not classes:
        raise ConfigError("the store declares no foreground class to score")
    if max(classes) >= num_classes:
        raise ConfigError(
            f"the store has classes {sorted(store_classes)} but the network predicts {num_classes} "
            "classes; evaluate on a store with the classes the run was trained on"
        )
    return classes


def score_cases(
    network: Network,
    store,
    cases: Sequence[Any],
    settings: InferenceSettings,
    classes: Mapping[int, str],
    *,
    empty: str = "strict",
    montage_cases: int = 4,
    progress: bool = True,
) -> ScoredCases:
    """Predict and score ``cases`` (``CaseInfo`` objects of ``store``), one at a time.

    Memory holds one case (its volume, label and prediction) at a time. ``montage_cases``
    evenly spaced cases keep one slice each for the overlay montage.
    """
    from tqdm import tqdm

    result = ScoredCases()
    labelled = [c for c in cases if c.has_label]
    result.skipped_unlabelled = [c.case_id for c in cases if not c.has_label]
    if result.skipped_unlabelled:
        log.warning("skipping %d unlabelled case(s) (nothing to score against): %s",
                    len(result.skipped_unlabelled), ", ".join(result.skipped_unlabelled[:10]))
    show = set(np.linspace(0, len(labelled) - 1, num=min(montage_cases, len(labelled)), dtype=int).tolist()) \
        if labelled and montage_cases > 0 else set()
    for index, info in enumerate(tqdm(labelled, desc="evaluate", unit="case", disable=not progress)):
        try:
            store.verify_case(info.case_id)  # a deleted chunk would read back as zeros
            image, gt = store.read_volume(info.case_id)
        except StoreError as exc:  # one damaged case must not end the evaluation of the others
            log.warning("case %s cannot be read and is left out: %s", info.case_id, exc)
            result.unreadable.append({"case_id": info.case_id, "error": str(exc)})
            continue
        pred = predict_case(network, image, info.stats, settings, case_id=info.case_id).labels
        rows = case_rows(info.case_id, info.patient_id, pred, gt, classes, info.spacing, empty)
        result.rows.extend(rows)
        if index in show:
            mean_dice = float(np.mean([row["dice"] for row in rows]))
            result.montage.append(montage_case(info.case_id, image, gt, pred, mean_dice))
    return result


def describe_selection(selection: Mapping[str, Any]) -> str:
    """``selection`` of :func:`action_ray.runs.resolve.checkpoint_selection` in a few words (log line, summary.md)."""
    if selection.get("choice") != "best":
        return f"{selection.get('choice')}: {selection.get('rule')}"
    facts = []
    if selection.get("ft_step") is not None:
        facts.append(f"FT step {selection['ft_step']}")
    if selection.get("val_dice") is not None:
        facts.append(f"val Dice {selection['val_dice']:.4f}")
    return "best on validation" + (f" ({', '.join(facts)})" if facts else "")


def default_out_dir(run_dir: str, split: str, checkpoint: str) -> str:
    return evaluation_reports(str(run_dir), split, checkpoint if checkpoint in ("last", "best") else "custom")


def evaluate_run(
    run_dir: str | Path,
    store_url: str,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    checkpoint: str = "last",
    empty: str = "strict",
    storage_options: Mapping[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
    montage_cases: int = 4,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate a run's student on ``split`` of the store; write the reports; return the summary.

    run_dir: run directory or checkpoint directory (local or ``s3://``).
    checkpoint: ``last`` | ``best`` | a checkpoint path (see :func:`action_ray.runs.resolve.resolve_checkpoint`).
    empty: empty-mask convention of :mod:`action_ray.metrics` (``strict`` or ``action``).
    storage_options: fsspec options for ``s3://`` run, store and output URLs.
    Writes ``metrics.csv``, ``summary.json``, ``summary.md`` and ``overlays.png`` to ``out_dir``
    (default ``<run_dir>/eval-<split>-<checkpoint>``). The returned summary is ``summary.json``'s
    content (NaN as None), with ``out_dir`` added.
    """

    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    if empty not in EMPTY_CONVENTIONS:
        raise ConfigError(f"--empty {empty!r} is not one of {', '.join(EMPTY_CONVENTIONS)}")
    started = time.perf_counter()
    options = dict(storage_options or {}) or None
    checkpoint_url = resolve_checkpoint(str(run_dir), checkpoint, options)
    selection = checkpoint_selection(checkpoint_url, checkpoint, options)
    student = load_student(checkpoint_url, device, options)
    store = open_store(store_url, options)
    classes = foreground_classes(store.classes, student.num_classes)
    settings = inference_settings(student.config, store.dataset_meta, batch_size=batch_size)
    cases = store.list_cases(split=split)
    if not cases:
        raise ConfigError(f"store {redact(store_url)} has no complete case in split {split!r}")
    if echo:
        echo(f"evaluating {redact(checkpoint_url)} (stage {student.stage}, step {student.step}; "
             f"{describe_selection(selection)}) on {len(cases)} {split} case(s) of {redact(store_url)}")
    scored = score_cases(student.network, store, cases, settings, classes, empty=empty, progress=progress,
                         montage_cases=montage_cases)
    if scored.unreadable and not scored.rows:
        raise StoreError(f"no case of split {split!r} could be read: "
                         + "; ".join(u["error"] for u in scored.unreadable[:3]))
    if scored.unreadable and echo:
        echo(f"warning: {len(scored.unreadable)} case(s) could not be read and are left out of the scores: "
             + ", ".join(u["case_id"] for u in scored.unreadable))
    if not scored.rows:
        raise ConfigError(f"split {split!r} of {redact(store_url)} has no labelled case to score "
                          f"({len(scored.skipped_unlabelled)} unlabelled)")
    out = str(out_dir) if out_dir is not None else default_out_dir(str(run_dir), split, checkpoint)
    curves = join(str(run_dir), CURVES_FILE)  # the run's training curves, linked from the report
    fs, curves_path = filesystem_for(curves)
    info = {
        **({"training_curves": redact(curves)} if fs.exists(curves_path) else {}),
        **student.describe(),
        "checkpoint_choice": describe_selection(selection) if checkpoint == "best" else checkpoint,
        "selection": selection,
        "split": split,
        "store": redact(str(store_url)),
        "empty": empty,
        "device": device,
        "skipped_unlabelled": scored.skipped_unlabelled,
        "unreadable_cases": scored.unreadable,
        "inference": {
            "dims": settings.dims, "slice_size": settings.slice_size if settings.dims == 2 else None,
            "image_interpolation": settings.image_interpolation if settings.dims == 2 else None,
            "window": settings.window, "stride": settings.stride, "batch_size": settings.batch_size,
            "normalisation": settings.normalisation.to_dict(),
        },
    }
    summary = build_summary(scored.rows, classes, info)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    write_reports(out, scored.rows, summary, options)
    write_montage(f"{out.rstrip('/')}/{OVERLAYS_PNG}", scored.montage, {0: "background", **classes},
                  title=f"{split}: {redact(checkpoint_url)}", storage_options=options)
    if echo:
        overall = summary["overall"]
        dice = overall.get("dice")
        echo(f"mean Dice {dice:.4f} over {summary['n_cases']} case(s); reports in {redact(out)}"
             if dice is not None else f"reports in {redact(out)}")
    return {**summary, "out_dir": out}
