"""The shape of the paper's table on the cardiac phantom: methods × label amounts, test Dice/HD95.

``action-ray bench quality --profile quick --out DIR`` builds a phantom store (synth → ingest,
skipped when already there), runs the ``tune-quality-<profile>`` sweep (FIFO: every cell is
needed; 2+ labelled-subset draws per cell) and prints, per label amount (1 patient, ≈5 %,
≈10 %, 100 %) and method, the test-split Dice and HD95 (mm) as mean ± sd over draws, per class
and averaged, with the exact command and its wall time. The test split is evaluated once per
finished trial and never used for selection (method.md §8.1).

Profiles (phantom count and size here; training sizes in the sweep presets):

* ``smoke`` – plumbing check in minutes: 2 methods × 2 label amounts × 1 draw, tiny iterations;
* ``quick`` – the full grid on 2 CPU cores (64² slices, cpu UNet); see docs/tune.md for time;
* ``full`` – the paper's protocol on GPUs (100 patients at 256², 30 000 iterations per stage).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from action_ray.errors import ActionRayError


@dataclass(frozen=True)
class QualityProfile:
    """Phantom collection and sweep of one profile."""

    patients: int
    size: int
    sweep: str
    overrides: tuple[str, ...] = field(default_factory=tuple)


SMOKE_ARMS = ("{grid_search: [{method: supervised, data.labelled_patients: 1}, "
              "{method: action, data.labelled_patients: 1}, {method: supervised, data.label_ratio: 0.25}, "
              "{method: action, data.label_ratio: 0.25}]}")

#: What each part of ACTION contributes at 1 labelled patient (3 draws), beside the control of a
#: supervised run with ACTION's labelled exposure (P2 + FT steps of supervised training). Other
#: label amounts: pass ``space.setting=...`` with the same entries and another labelled_patients.
ABLATION_ARMS = ("{grid_search: ["
                 "{method: action_ft_only, data.labelled_patients: 1}, "
                 "{method: action, ft.anco_weight: 0, data.labelled_patients: 1}, "
                 "{method: supervised, schedule.ft.iterations: 2100, data.labelled_patients: 1}]}")

PROFILES: dict[str, QualityProfile] = {
    "smoke": QualityProfile(16, 128, "tune-quality-quick", (
        f"space.setting={SMOKE_ARMS}", "space.draw={train.seed: 0, data.split_seed: 0}",
        "schedule.p1.iterations=20", "schedule.p2.iterations=20", "schedule.ft.iterations=40",
        "train.report_every=20", "train.checkpoint_every=40")),
    "quick": QualityProfile(57, 128, "tune-quality-quick"),
    "ablation": QualityProfile(57, 128, "tune-quality-quick", (f"space.setting={ABLATION_ARMS}",)),
    "full": QualityProfile(100, 256, "tune-quality-full"),
}

METHOD_COLUMNS = ("supervised", "mean_teacher", "action")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                        help="smoke (minutes), quick (the table, 2 CPU cores, <= 90 min), ablation "
                             "(what each part of ACTION adds, 2 CPU cores), full (GPUs)")
    parser.add_argument("--out", default="bench-quality", help="phantoms, store and sweep go here")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="synth/ingest processes")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted table in --out: finished trials are kept")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="sweep or training overrides, as for action-ray tune")


# ------------------------------------------------------------------------------- phantoms
def ensure_phantom_store(out: str, patients: int, size: int, workers: int) -> str:
    """Synthesise ``patients`` cardiac phantoms and ingest them (both steps resume/skip)."""
    from action_ray.ingest.runner import IngestOptions, format_report, run_ingest
    from action_ray.synth.collection import CollectionRequest, write_collection

    raw = os.path.join(out, f"phantoms-{patients}x{size}")
    store = os.path.join(out, f"cardiac-{patients}x{size}.zarr")
    made = write_collection(CollectionRequest("cardiac", Path(raw), cases=patients, size=size, workers=workers))
    print(f"phantoms: wrote {made.written}, skipped {made.skipped} already complete, in {raw}", flush=True)
    report = run_ingest(IngestOptions(src=raw, dst=store, layout="acdc", recipe="phantom-cardiac", workers=workers),
                        say=lambda line: print(line, flush=True))
    print(format_report(report), flush=True)
    if report.exit_code:
        raise ActionRayError(f"ingesting the phantoms {raw} into {store} left cases out (see the report above); "
                             "delete --out and run the benchmark again")
    return store


# ---------------------------------------------------------------------------------- table
def label_row(row: Mapping[str, Any]) -> str:
    """The paper's row name of a trial: ``1 patient``, ``5 %``, ``10 %``, ``100 %``."""
    patients = row.get("data.labelled_patients")
    if patients is not None and not (isinstance(patients, float) and math.isnan(patients)):
        return f"{int(patients)} patient" + ("s" if int(patients) != 1 else "")
    return f"{float(row['data.label_ratio']) * 100:g} %"


def method_label(row: Mapping[str, Any]) -> str:
    """The table column of a trial: its method, marked when an ablation key changes it."""
    name = str(row.get("method"))
    anco = row.get("ft.anco_weight")
    if isinstance(anco, (int, float)) and not (isinstance(anco, float) and math.isnan(anco)) and anco == 0:
        name += " (no L_anco)"
    steps = row.get("schedule.ft.iterations")
    if isinstance(steps, (int, float)) and not (isinstance(steps, float) and math.isnan(steps)):
        name += f" ({int(steps)} FT steps)"
    return name


def _cell(values: Sequence[float], scale: float) -> str:
    from action_ray.tuning.results import fmt_mean_sd, mean_sd

    return fmt_mean_sd(mean_sd(values), scale)


def class_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Foreground classes found in the trials' ``test_dice_<name>`` columns, in first-seen order."""
    names: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith("test_dice_") and key[len("test_dice_"):] not in names:
                names.append(key[len("test_dice_"):])
    return names


def quality_tables(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: the paper-shaped Dice / HD95 table (rows label amounts, columns methods), then
    per-class Dice and HD95 per (label amount, method). Only finished trials count."""
    done = [r for r in rows if r.get("status") == "done" and "test_dice" in r]
    by_cell: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in done:
        by_cell.setdefault((label_row(row), method_label(row)), []).append(row)
    labels = sorted({k[0] for k in by_cell}, key=_label_order)
    methods = [m for m in METHOD_COLUMNS if any(k[1] == m for k in by_cell)]
    methods += sorted({k[1] for k in by_cell} - set(methods))
    lines = ["Test split, mean ± sd over labelled-subset draws (n per cell in brackets). "
             "Dice in %, HD95 in mm (mean of the foreground classes).", "",
             "| labelled | " + " | ".join(f"{m} Dice / HD95" for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for label in labels:
        cells = []
        for method in methods:
            members = by_cell.get((label, method), [])
            if not members:
                cells.append("–")
                continue
            dice = _cell([m["test_dice"] for m in members], 100.0)
            hd95 = _cell([m.get("test_hd95_mm", math.nan) for m in members], 1.0)
            cells.append(f"{dice} / {hd95} ({len(members)})")
        facts = next(iter(by_cell.get((label, methods[0]), []) or
                          [m for k, ms in by_cell.items() if k[0] == label for m in ms]), {})
        shown = f"{label} ({facts.get('labelled_patients', '?')}/{facts.get('train_patients', '?')})"
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    classes = class_names(done)
    lines += ["", "Per class (test): Dice % and HD95 mm, mean ± sd.", "",
              "| labelled | method | " + " | ".join(f"Dice {c}" for c in classes)
              + " | " + " | ".join(f"HD95 {c}" for c in classes) + " |",
              "|---|---|" + "---:|" * (2 * len(classes))]
    for label in labels:
        for method in methods:
            members = by_cell.get((label, method), [])
            if not members:
                continue
            dice = [_cell([m.get(f"test_dice_{c}", math.nan) for m in members], 100.0) for c in classes]
            hd95 = [_cell([m.get(f"test_hd95_mm_{c}", math.nan) for m in members], 1.0) for c in classes]
            lines.append(f"| {label} | {method} | " + " | ".join(dice + hd95) + " |")
    return "\n".join(lines) + "\n"


def _label_order(name: str) -> float:
    if name.endswith("%"):
        return float(name.split()[0])
    return -1.0 / float(name.split()[0])  # patients first (fewest first)


def timing_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Mean wall seconds per finished trial and method (training incl. Ray start-up; test eval)."""
    from action_ray.tuning.results import mean_sd

    lines = []
    for method in sorted({method_label(r) for r in rows}):
        members = [r for r in rows if method_label(r) == method and r.get("status") == "done"]
        train, _, n = mean_sd(r.get("train_seconds", math.nan) for r in members)
        test, _, _ = mean_sd(r.get("test_seconds", math.nan) for r in members)
        if n:
            lines.append(f"- {method}: {train:.0f} s training per trial (incl. Ray start-up and validation), "
                         f"{test:.0f} s test evaluation, {n} trial(s)")
    return lines


# --------------------------------------------------------------------------- val curves
def validation_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """{label amount: {method: {FT step: [val Dice of each draw]}}} from the trials' logs."""
    from action_ray.runs.logs import read_validation_log

    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    for row in rows:
        if row.get("status") != "done" or not row.get("run_dir"):
            continue
        per_step = curves.setdefault(label_row(row), {}).setdefault(method_label(row), {})
        for entry in read_validation_log(str(row["run_dir"])):
            if isinstance(entry.get("val_dice"), (int, float)):
                per_step.setdefault(int(entry["ft_step"]), []).append(float(entry["val_dice"]))
    return curves


def plot_validation_curves(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG: one panel per label amount, val Dice (%) against FT step per method, mean ± sd."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from action_ray.tuning.results import mean_sd

    curves = validation_curves(rows)
    labels = sorted(curves, key=_label_order)
    # at least 4.8 in wide, so that the title fits above a single panel
    figure = Figure(figsize=(max(4.8, 3.6 * max(1, len(labels))), 3.2), dpi=110)
    for index, label in enumerate(labels):
        axes = figure.add_subplot(1, max(1, len(labels)), index + 1)
        for method in [m for m in METHOD_COLUMNS if m in curves[label]] + \
                sorted(set(curves[label]) - set(METHOD_COLUMNS)):
            steps = sorted(curves[label][method])
            stats = [mean_sd(curves[label][method][s]) for s in steps]
            axes.errorbar(steps, [100 * m for m, _, _ in stats],
                          yerr=[100 * (sd if math.isfinite(sd) else 0.0) for _, sd, _ in stats],
                          marker="o", capsize=3, label=method)
        axes.set_title(f"{label} labelled", fontsize=9)
        axes.set_xlabel("FT step", fontsize=8)
        axes.set_ylim(0, 100)
        axes.grid(True, alpha=0.3)
        if index == 0:
            axes.set_ylabel("val Dice (%)", fontsize=8)
            axes.legend(fontsize=7)
    figure.suptitle("Validation Dice during fine-tuning (mean ± sd over draws)", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> int:
    from action_ray.tuning.driver import run_sweep
    from action_ray.tuning.space import load_sweep

    profile = PROFILES[args.profile]
    # ray.train.report blocks up to this interval (default 2 s, ray-notes §1); the local Ray we
    # start inherits it. A cluster in RAY_ADDRESS keeps its own setting.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    started = time.perf_counter()
    out = os.path.abspath(args.out)
    store = ensure_phantom_store(out, profile.patients, profile.size, args.workers)
    prepared = time.perf_counter() - started
    sweep = load_sweep(profile.sweep, [f"data.store={store}", f"tune.storage_path={out}",
                                       f"tune.name=quality-{args.profile}", *profile.overrides,
                                       *(args.overrides or ())])
    command = "action-ray bench quality " + shlex.join(
        ["--profile", args.profile, "--out", args.out, "--workers", str(args.workers), *(args.overrides or ())])
    outcome = run_sweep(sweep, command=command, resume=args.resume)
    total = time.perf_counter() - started
    report = "\n".join([
        f"# bench quality ({args.profile}): cardiac phantoms, {profile.patients} patients at {profile.size}²",
        "", f"Command: `{command}`",
        f"Wall time: {total / 60:.1f} min (phantoms + store {prepared / 60:.1f} min, sweep "
        f"{outcome.seconds / 60:.1f} min, {len(outcome.rows)} trials).", "",
        quality_tables(outcome.rows), "Per-trial cost:", *timing_lines(outcome.rows), "",
        f"Trials, validation curves and plots: {outcome.sweep_dir}", ""])
    print(report)
    with open(os.path.join(outcome.sweep_dir, "quality.md"), "w") as handle:
        handle.write(report)
    try:
        with open(os.path.join(outcome.sweep_dir, "val_curves.png"), "wb") as handle:
            handle.write(plot_validation_curves(outcome.rows))
        print(f"validation curves: {os.path.join(outcome.sweep_dir, 'val_curves.png')}")
    except Exception as exc:  # noqa: BLE001 - the table is the result; a plot failure only warns
        print(f"warning: could not draw the validation curves: {exc}")
    failed = [r for r in outcome.rows if r.get("status") == "error"]
    return 1 if failed else 0
