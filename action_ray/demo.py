"""Synthesise cardiac phantoms, ingest them, train ACTION (P1 -> P2 -> FT) on 2 CPU workers and
print the per-class Dice on the test split: the whole toolkit, end to end, in minutes.

Every part is resumable and re-running skips what is done: synthesis skips complete patients,
ingest skips complete cases, training resumes (or skips) the run whose name is the config hash,
evaluation is repeated (seconds). Output in ``--out`` (default ``./demo-output``):
``phantoms/`` (ACDC layout NIfTI), ``store.zarr``, ``runs/<run>/`` (config, split, metrics,
checkpoints), ``runs/<run>/eval-test-last/`` (metrics.csv, summary.md, overlays.png).
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from typing import Sequence

DEFAULT_CASES = 24
DEFAULT_ITERATIONS = 100
#: FT gets this many times the pre-training iterations: the labelled patients are few and the
#: segmentation head only trains in FT (100 FT steps left the demo at ~16 % mean Dice).
FT_FACTOR = 5


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES,
                        help=f"phantom patients to synthesise (default {DEFAULT_CASES}; 70/10/20 split)")
    parser.add_argument("--size", type=int, choices=(128, 256), default=128, help="phantom in-plane size")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"iterations of P1 and of P2 (default {DEFAULT_ITERATIONS}); FT runs "
                             f"{FT_FACTOR}x as many unless --ft-iterations is given")
    parser.add_argument("--ft-iterations", type=int, default=None,
                        help=f"iterations of the FT stage (default {FT_FACTOR} x --iterations)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="phantom collection seed")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="extra training config overrides on top of the cpu-demo preset")


def _run_verb(module_name: str, argv: Sequence[str]) -> int:
    """Run another verb in-process with its own argument parser (errors propagate as is)."""
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"action-ray {module_name.rsplit('.', 2)[-2]}")
    module.configure(parser)
    return int(module.run(parser.parse_args(list(argv))) or 0)


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def ft_iterations(args: argparse.Namespace) -> int:
    return args.ft_iterations if args.ft_iterations is not None else FT_FACTOR * args.iterations


def demo_config(args: argparse.Namespace, store: str, runs: str):
    """The cpu-demo preset on this demo's store, with the demo's iteration and worker counts."""
    from action_ray.config import load_config

    overrides = [
        f"data.store={store}", f"train.storage_path={runs}", f"train.num_workers={args.workers}",
        *[f"schedule.{stage}.iterations={args.iterations}" for stage in ("p1", "p2")],
        f"schedule.ft.iterations={ft_iterations(args)}",
    ]
    report_every = max(1, min(10, args.iterations // 5))
    checkpoint_every = report_every * max(1, args.iterations // (2 * report_every))
    # validation (best/ checkpoint) at mid-FT and at the end: every checkpoint would pause the
    # demo's training ten times for a few seconds each
    val_every = checkpoint_every * max(1, ft_iterations(args) // (2 * checkpoint_every))
    overrides += [f"train.report_every={report_every}", f"train.checkpoint_every={checkpoint_every}",
                  f"eval.val_every={val_every}"]
    config = load_config("cpu-demo", overrides + list(args.overrides or ()))
    config.train.resume = True  # the run name is the config hash: same flags, same run
    return config


def run(args: argparse.Namespace) -> int:
    from action_ray.errors import ConfigError

    if args.cases < 5:
        raise ConfigError(f"--cases {args.cases}: the demo needs at least 5 patients (train, val and test splits)")
    if args.iterations < 1 or ft_iterations(args) < 1:
        raise ConfigError(f"--iterations and --ft-iterations must be >= 1, got {args.iterations}, "
                          f"{ft_iterations(args)}")
    out = os.path.abspath(args.out)
    phantoms, store, runs = (os.path.join(out, name) for name in ("phantoms", "store.zarr", "runs"))
    started = time.perf_counter()

    _banner(f"1/4 synthesise {args.cases} cardiac phantom patients ({args.size}x{args.size}) -> {phantoms}")
    _run_verb("action_ray.synth.command", ["cardiac", "--out", phantoms, "--cases", str(args.cases),
                                           "--size", str(args.size), "--seed", str(args.seed)])
    _banner(f"2/4 ingest into the Zarr store {store}")
    _run_verb("action_ray.ingest.command", [phantoms, store, "--layout", "acdc", "--recipe", "phantom-cardiac",
                                            "--no-progress"])

    config = demo_config(args, store, runs)
    _banner(f"3/4 train {config.method}: stages {' -> '.join(config.stages or [])}, "
            f"{args.iterations} iterations of P1/P2, {ft_iterations(args)} of FT, {args.workers} worker(s)")
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
