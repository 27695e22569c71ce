"""``action-ray info``: summarise a volume store: cases per split, labelled vs unlabelled, shapes, spacings, class fractions.

Example: ``action-ray info s3://bucket/acdc.zarr --json``. Only complete cases are counted;
leftovers of interrupted writes are reported separately so they are not mistaken for data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from action_ray.commands.options import add_storage_option, storage_options_from


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="store URL: a local path or s3://bucket/prefix.zarr")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_storage_option(parser)


def run(args: argparse.Namespace) -> int:
    from action_ray.store import open_store
    from action_ray.store.summary import format_table, summarise

    store = open_store(args.store, storage_options_from(args))
    summary = summarise(store)
    try:
        print(json.dumps(summary) if args.json else format_table(summary), flush=True)
    except BrokenPipeError:  # `action-ray info STORE --json | head`: the reader left early, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
    return 0
