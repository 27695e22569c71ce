"""``action-ray train``: train ACTION (P1 -> P2 -> FT) or a baseline on Ray Train.

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
                        help="continue the run with this name (train.run_name or the config hash); refused "
                             "when there is no such run")
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
        require_existing_run(config)
    print(config.pretty(), flush=True)
    summary = run_training(config, stop_after_steps=args.stop_after_steps,
                           log=lambda line: print(line, flush=True), dry_run=args.dry_run)
    print(json.dumps(summary, indent=2), flush=True)
    return 0


def require_existing_run(config) -> None:
    """``--resume`` names a run that must exist: resuming nothing would silently start afresh.

    A derived run name (``<method>-<config hash>``) depends on the config, the global batch
    included, so a changed setting (or a per-worker batch that changes the global one) points
    at another name; the message says how to name the run explicitly.
    """
    from action_ray.errors import ConfigError
    from action_ray.runs.files import read_text
    from action_ray.runs.layout import CONFIG_FILE, join, run_dir_of
    from action_ray.train.trainer import run_name
    from action_ray.urls import redact

    name = run_name(config)
    run_dir = run_dir_of(config.train.resolved_storage_path, name)
    if read_text(join(run_dir, CONFIG_FILE)) is not None:
        return
    derived = "" if config.train.run_name else (
        f" (the name {name} is derived from this config; to resume a run started with other settings "
        "or another global batch, pass train.run_name=NAME as printed when it started)")
    raise ConfigError(f"--resume: there is no run {name!r} at {redact(run_dir)}{derived}; "
                      "drop --resume to start it")
