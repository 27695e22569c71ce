"""Train ACTION (P1 -> P2 -> FT) or a baseline on Ray Train.

``action-ray train --config cpu-demo data.store=./store.zarr train.num_workers=2`` prints the
resolved config, saves it with the run in ``<train.storage_path>/<run name>/`` and trains
every stage in one ``TorchTrainer`` run, rank 0 printing step, losses and it/s every
``train.report_every`` steps. ``--resume`` continues a run with the same name from its last
checkpoint (a run that is already complete is left alone). Uses the cluster in
``RAY_ADDRESS`` when set (e.g. under ``ray job submit``), else starts a local Ray.
"""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    from action_ray.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run with this name (train.run_name or the config hash) if it exists")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, store, split and checkpoints and print the plan; no Ray, no files")
    parser.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                        help=argparse.SUPPRESS)  # testing aid: simulate a crash after N steps


def run(args: argparse.Namespace) -> int:
    from action_ray.config import config_from_args
    from action_ray.train.trainer import run_training

    config = config_from_args(args)
    if args.resume:
        config.train.resume = True
    print(config.pretty(), flush=True)
    summary = run_training(config, stop_after_steps=args.stop_after_steps,
                           log=lambda line: print(line, flush=True), dry_run=args.dry_run)
    print(json.dumps(summary, indent=2), flush=True)
    return 0
