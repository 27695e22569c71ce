"""Synthesise cardiac phantoms, ingest them, train ACTION (P1 -> P2 -> FT) on 2 CPU workers and
print the per-class Dice on the test split: the whole toolkit, end to end, in minutes.

It trains the ``cpu-quality`` preset, the recipe of the README's quality table, with
``DEMO_LABELLED_PATIENTS`` labelled patients on two Ray Train workers (see `demo_config` for how
the batches are split). ``train.deterministic`` is on in that preset, so the same flags print
the same Dice.

Every part is resumable and re-running skips what is done: synthesis skips complete patients,
ingest skips complete cases, training resumes (or skips) the run whose name is the config hash,
evaluation is repeated (seconds). Output in ``--out`` (default ``./demo-output``):
``phantoms/`` (ACDC layout NIfTI), ``store.zarr``, ``runs/<run>/`` (config, split, metrics,
checkpoints), ``runs/<run>/eval-test-last/`` (metrics.csv, summary.md, overlays.png).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

DEFAULT_CASES = 24
DEMO_PRESET = "cpu-quality"
#: The paper's headline label amount (3 labelled ACDC patients); 24 phantoms give 16 train patients.
DEMO_LABELLED_PATIENTS = 3
#: Shorter than the preset's 900 / 1200 so the whole demo fits ~10 minutes on 2 shared cores:
#: Ray Train's FT step on CPU runs at ~1-2 it/s per worker there (the one-cycle schedule
#: follows whatever length is given).
DEMO_PRETRAIN_ITERATIONS = 400
DEMO_FT_ITERATIONS = 600


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                        help=f"phantom patients to synthesise (default {DEFAULT_CASES}; 70/10/20 split)")
    parser.add_argument("--size", type=int, choices=(128, 256), default=128, help="phantom in-plane size")
    parser.add_argument("--iterations", type=int, default=DEMO_PRETRAIN_ITERATIONS,
                        help=f"iterations of P1 and of P2 (default {DEMO_PRETRAIN_ITERATIONS}; the preset has 900)")
    parser.add_argument("--ft-iterations", type=int, default=DEMO_FT_ITERATIONS,
                        help=f"iterations of the FT stage (default {DEMO_FT_ITERATIONS}; the preset has 1200)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="phantom collection seed")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"extra training config overrides on top of the {DEMO_PRESET} preset")


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def demo_config(args: argparse.Namespace, store: str, runs: str):
    """The cpu-quality preset on this demo's store, split over ``--workers`` workers.

    The FT batch per worker is the preset's divided by the worker count, so FT — the expensive
    stage — keeps the preset's global batch of 4 + 4 and runs about twice as fast on two
    workers. P1/P2 keep 2 + 2 slices per worker (BatchNorm needs a few images per worker; their
    steps are cheap), so their global batch and bank grow with the workers, as on a cluster.
    Reports every 100 steps (fewer for tiny runs); validation twice during FT and at its end.
    """
    from action_ray.config import load_config

    base = load_config(DEMO_PRESET)
    workers = max(1, args.workers)
    data = base.data
    pretrain = args.iterations or base.schedule.p1.iterations
    ft = args.ft_iterations or base.schedule.ft.iterations
    overrides = [
        f"data.store={store}", f"train.storage_path={runs}", f"train.num_workers={args.workers}",
        *[f"schedule.{stage}.iterations={pretrain}" for stage in ("p1", "p2")],
        f"schedule.ft.iterations={ft}",
        *[f"data.{key}={max(1, getattr(data, key) // workers)}" for key in
          ("ft_labelled_batch", "ft_unlabelled_batch")],
    ]
    user_keys = {item.split("=", 1)[0].strip() for item in (args.overrides or ())}
    if not user_keys & {"data.labelled_patients", "data.label_ratio"}:
        overrides.append(f"data.labelled_patients={DEMO_LABELLED_PATIENTS}")
    report_every = max(1, min(100, min(pretrain, ft) // 4))
    checkpoint_every = report_every * max(1, min(pretrain, ft) // (2 * report_every))
    val_every = checkpoint_every * max(1, ft // (2 * checkpoint_every))
    overrides += [f"train.report_every={report_every}", f"train.checkpoint_every={checkpoint_every}",
                  f"eval.val_every={val_every}"]
    config = load_config(DEMO_PRESET, overrides + list(args.overrides or ()))
    config.train.resume = True  # the run name is the config hash: same flags, same run
    return config


def run(args: argparse.Namespace) -> int:
    from action_ray.errors import ConfigError
    from action_ray.ingest.runner import IngestOptions, format_report, run_ingest
    from action_ray.synth.collection import CollectionRequest, write_collection

    if args.cases < 5:
        raise ConfigError(f"--cases {args.cases}: the demo needs at least 5 patients (train, val and test splits)")
    if (args.iterations is not None and args.iterations < 1) or (args.ft_iterations is not None
                                                                   and args.ft_iterations < 1):
        raise ConfigError(f"--iterations and --ft-iterations must be >= 1, got {args.iterations}, "
                          f"{args.ft_iterations}")
    out = os.path.abspath(args.out)
    phantoms, store, runs = (os.path.join(out, name) for name in ("phantoms", "store.zarr", "runs"))
    started = time.perf_counter()

    _banner(f"1/4 synthesise {args.cases} cardiac phantom patients ({args.size}x{args.size}) -> {phantoms}")
    request = CollectionRequest("cardiac", Path(phantoms), cases=args.cases, size=args.size, seed=args.seed,
                                workers=os.cpu_count() or 1)
    made = write_collection(request)
    print(f"wrote {made.written} {request.unit}(s), skipped {made.skipped} already complete, "
          f"{request.layout} layout in {request.out}", flush=True)
    _banner(f"2/4 ingest into the Zarr store {store}")
    report = run_ingest(IngestOptions(src=phantoms, dst=store, layout="acdc", recipe="phantom-cardiac",
                                      progress=False), say=lambda line: print(line, flush=True))
    print(format_report(report), flush=True)

    config = demo_config(args, store, runs)
    _banner(f"3/4 train {config.method} ({DEMO_PRESET}, {config.data.labelled_patients} labelled patients): "
            f"stages {' -> '.join(config.stages or [])}, {config.schedule.p1.iterations} iterations of P1/P2, "
            f"{config.schedule.ft.iterations} of FT, {args.workers} worker(s)")
    from action_ray.train.trainer import run_training

    summary = run_training(config, log=lambda line: print(line, flush=True))
    if summary.get("interrupted"):
        raise ConfigError("training stopped before the last stage finished; run the demo again to resume")

    _banner("4/4 evaluate the final student on the test split")
    from action_ray.evaluation import evaluate_run
    from action_ray.evaluation.report import summary_markdown

    result = evaluate_run(summary["run_dir"], store, split="test", progress=False,
                          echo=lambda line: print(line, flush=True))
    print(summary_markdown(result), flush=True)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; everything is in {out}", flush=True)
    return 0
