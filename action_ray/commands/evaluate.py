"""``action-ray evaluate``: per-case Dice, Jaccard, HD95 and ASD (mm and voxels) of a trained run on one split.

Writes ``metrics.csv`` (one row per case and class), ``summary.json``, ``summary.md`` and
``overlays.png`` to ``--out``. The checkpoint is ``last`` (the final FT student) unless
``--checkpoint best`` picks the one training selected on the *validation* split; evaluation
itself never selects, so the test split (the default) cannot leak into model choice.
"""

from __future__ import annotations

import argparse

from action_ray.commands.options import add_storage_option, storage_options_from


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (local or s3://) or a checkpoint directory")
    parser.add_argument("--store", required=True, help="Zarr volume store (local path or s3://)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="split to evaluate (default: test)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN/eval-SPLIT-CHECKPOINT)")
    parser.add_argument("--checkpoint", default="last",
                        help="last (default: final FT checkpoint), best (chosen on validation), or a path")
    parser.add_argument("--empty", choices=["strict", "action"], default="strict",
                        help="empty-mask convention (docs/metrics.md); 'action' reproduces the papers")
    add_inference_arguments(parser)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``predict``: batch size, device, progress, storage."""
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices (2-D) or windows (3-D) per forward pass (default: eval.batch_size)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_storage_option(parser)


def run(args: argparse.Namespace) -> int:
    from action_ray.evaluation import evaluate_run

    summary = evaluate_run(
        args.run, args.store, split=args.split, out_dir=args.out, checkpoint=args.checkpoint,
        empty=args.empty, storage_options=storage_options_from(args) or None,
        device=args.device, batch_size=args.batch_size, progress=not args.no_progress, echo=print,
    )
    from action_ray.evaluation.report import summary_markdown

    print(summary_markdown(summary))
    # 3, as for ingest: the reports are written, but some cases were left out (see the warning)
    return 3 if summary.get("unreadable_cases") else 0
