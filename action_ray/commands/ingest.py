"""``action-ray ingest``: convert a NIfTI collection (local folder or s3:// prefix) into a Zarr volume store.

Resumable: complete cases are skipped without being read, so re-running after an interruption
finishes the job and re-running a finished job is a quick no-op. Bad cases are reported with the
file and the reason and skipped; the run then exits with code 3. Run one ingest per store at a
time: a run starts by deleting incomplete cases, which another live run may be writing.

Examples:
  action-ray ingest ACDC/database ./acdc.zarr --layout acdc --workers 4
  action-ray ingest s3://scans/LiTS s3://scans/lits.zarr --layout lits   # AWS_* env vars for credentials
  action-ray ingest ./study ./study.zarr --layout folder --recipe ./study-recipe.yaml
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from action_ray.commands.options import add_storage_option, storage_options_from
from action_ray.errors import ActionRayError
from action_ray.ingest.layouts import LAYOUTS
from action_ray.urls import redact, secret_option_values


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 2)[2]
    parser.add_argument("src", metavar="SRC", help="source collection: folder or s3://bucket/prefix")
    parser.add_argument("dst", metavar="DST", help="volume store to create or complete: path or s3://bucket/x.zarr")
    parser.add_argument("--layout", required=True, choices=LAYOUTS, help="how SRC is organised")
    parser.add_argument("--recipe", help="dataset recipe name (acdc, lits, msd, phantom-cardiac, phantom-liver) "
                        "or path to a recipe.yaml; default: the layout's own (required for --layout folder)")
    parser.add_argument("--workers", type=int, default=2, help="cases processed in parallel (default 2)")
    parser.add_argument("--scheduler", default="threads", choices=("threads", "processes", "sync", "ray"),
                        help="dask scheduler for the workers (default threads: measured fastest, see bench "
                             "ingest); ray: the Ray cluster in RAY_ADDRESS, one case per CPU on every node "
                             "(a local Ray of --workers CPUs when RAY_ADDRESS is unset)")
    add_storage_option(parser, "fsspec/s3fs option for SRC and DST, repeatable "
                       "(e.g. endpoint_url=http://127.0.0.1:9000); AWS_* env vars also work")
    parser.add_argument("--overwrite", action="store_true", help="re-ingest cases that are already complete")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 70/10/20 patient split (default 0)")
    parser.add_argument("--split-file", help="YAML {train: [patient ids], val: [...], test: [...]}; "
                        "overrides the recipe's split")
    parser.add_argument("--chunking", choices=("slice", "patch"), help="store chunks: one axial slice "
                        "(2-D training) or 3-D patches; default from the recipe")
    parser.add_argument("--csv", default="cases.csv", help="--layout folder: CSV name inside SRC (default cases.csv)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.add_argument("--report", metavar="FILE", help="also write one JSON line per case (status, reason, "
                        "seconds, and the node that ran it) to this local file")


def mask_secrets(text: str, storage_options: dict) -> str:
    """``redact`` plus the secret values given as ``--storage-option`` (not in the environment)."""
    return redact(text, secret_option_values(storage_options))



def run(args: argparse.Namespace) -> int:
    from action_ray.ingest.runner import IngestOptions, format_report, run_ingest

    if args.workers < 1:
        from action_ray.errors import ConfigError

        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    options = IngestOptions(
        src=args.src, dst=args.dst, layout=args.layout, recipe=args.recipe,
        storage_options=storage_options_from(args), workers=args.workers,
        scheduler=args.scheduler, overwrite=args.overwrite, seed=args.seed, split_file=args.split_file,
        chunking=args.chunking, csv=args.csv, progress=args.progress,
    )
    try:
        report = run_ingest(options, say=lambda line: print(line, flush=True))
    except ActionRayError as exc:
        raise type(exc)(mask_secrets(str(exc), options.storage_options)) from None
    print(mask_secrets(format_report(report), options.storage_options), flush=True)
    if args.report:
        from action_ray.files import write_atomic

        lines = [json.dumps(asdict(result), sort_keys=True) for result in report.results]
        write_atomic(args.report, mask_secrets("".join(line + "\n" for line in lines), options.storage_options))
        print(f"per-case report: {args.report}", flush=True)
    return report.exit_code
