"""Per-case Dice, Jaccard, HD95 and ASD (mm and voxels) of a trained run on one split.

Writes ``metrics.csv``, ``summary.json``, ``summary.md`` and ``overlays.png`` to ``--out``.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (local or s3://) or a checkpoint directory")
    parser.add_argument("--store", required=True, help="Zarr volume store (local path or s3://)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN/eval-SPLIT-CHECKPOINT)")
    parser.add_argument("--checkpoint", default="last", help="last (default), best, or a checkpoint path")
    parser.add_argument("--empty", choices=["strict", "action"], default="strict",
                        help="empty-mask convention (see docs/metrics.md)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices (2-D) or windows (3-D) per forward pass")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--storage-option", action="append", default=[], metavar="K=V",
                        help="fsspec storage option for s3:// URLs (repeatable)")


def run(args: argparse.Namespace) -> int:
    from action_ray.evaluation import evaluate_run
    from action_ray.urls import parse_storage_options

    raise NotImplementedError  # filled in below
