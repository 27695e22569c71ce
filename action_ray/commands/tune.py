"""``action-ray tune``: sweep training configs on Ray Tune: label ratio, temperatures, bank size, method, seeds.

``action-ray tune --config tune-cpu data.store=STORE`` runs every trial of the sweep file
(a ``tune-*`` preset or your own YAML; see docs/tune.md), each one a full training run, with
ASHA stopping trials on validation Dice, and writes ``results.csv``, ``results.md`` and
``dice_vs_label_ratio.png`` in ``<tune.storage_path>/<name>/``. Overrides: ``tune.KEY=V`` and
``space.KEY=V`` edit the sweep, any other ``KEY=V`` is a training override for every trial.
An interrupted sweep continues with the same command plus ``--resume`` (``Tuner.restore``).
"""

from __future__ import annotations

import argparse
import shlex


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE|PRESET",
                        help="sweep YAML or preset: tune-cpu, tune-temperatures, tune-quality-quick|full")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the sweep and list its grid without starting Ray")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep of the same name (same --config and overrides): "
                             "finished trials are kept, unfinished ones resume from their last checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="tune.max_concurrent_trials=2, space.method={grid_search: [action]}, data.store=...")


def run(args: argparse.Namespace) -> int:
    from action_ray.tuning.driver import preflight_trials
    from action_ray.tuning.space import load_sweep, sweep_name

    sweep = load_sweep(args.config, list(args.overrides or ()))
    combos = preflight_trials(sweep, sweep.base_config())  # every trial against the store, before Ray
    print(f"sweep {sweep_name(sweep)} ({sweep.origin}): {len(combos)} grid point(s) x "
          f"{sweep.tune.num_samples} sample(s), scheduler {sweep.tune.scheduler}, metric {sweep.tune.metric}")
    for combo in combos:
        print("  " + " ".join(f"{k}={v}" for k, v in combo.items()))
    if args.dry_run:
        return 0
    from action_ray.tuning.driver import run_sweep
    from action_ray.tuning.results import results_markdown

    command = "action-ray tune " + shlex.join([*(["--config", args.config] if args.config else []),
                                               *(args.overrides or ())])
    outcome = run_sweep(sweep, command=command, resume=args.resume)
    print(results_markdown(outcome.rows, sweep.tune.metric, outcome.seconds, command))
    print(f"results: {outcome.sweep_dir}/results.csv, results.md, dice_vs_label_ratio.png "
          f"({outcome.seconds / 60:.1f} min)")
    failed = [r for r in outcome.rows if r.get("status") == "error"]
    return 1 if failed else 0
