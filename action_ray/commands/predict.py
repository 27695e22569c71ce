"""``action-ray predict``: write NIfTI label maps (uint8, the input's affine) from a checkpoint.

Inputs are store cases (``--store`` with ``--split`` / ``--cases``) or NIfTI files. Each output
``<case>_seg.nii.gz`` lies on the input's voxel grid; ``--probabilities`` adds
``<case>_prob.nii.gz`` (float32, 4-D, classes last).
"""

from __future__ import annotations

import argparse

from action_ray.commands.evaluate import add_inference_arguments
from action_ray.commands.options import storage_options_from


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint",
                        help="run directory (uses its last checkpoint) or checkpoint directory; local or s3://")
    parser.add_argument("niftis", nargs="*", metavar="NIFTI", help="NIfTI files to segment (instead of --store)")
    parser.add_argument("--store", default=None, help="Zarr volume store whose cases to segment")
    parser.add_argument("--split", default=None, choices=["train", "val", "test"], help="store split (default: all)")
    parser.add_argument("--cases", nargs="+", default=None, metavar="ID", help="store case ids")
    parser.add_argument("--out", required=True, help="output directory (local or s3://)")
    parser.add_argument("--probabilities", action="store_true", help="also write float32 probability maps")
    methods = ["percentile", "window", "minmax", "zscore", "none"]  # action_ray.io.normalise.METHODS
    parser.add_argument("--normalisation", default=None, choices=methods,
                        help="override the intensity normalisation "
                             "(NIfTI inputs when the training store is unreachable)")
    # the flag's spelling before the vocabulary was unified, still accepted from users' scripts
    parser.add_argument("--normalization", dest="normalisation", choices=methods, help=argparse.SUPPRESS)
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from action_ray.evaluation import predict_cases
    from action_ray.urls import redact

    written = predict_cases(
        args.checkpoint, args.out, store_url=args.store, split=args.split, cases=args.cases,
        niftis=args.niftis or None, probabilities=args.probabilities,
        storage_options=storage_options_from(args) or None, device=args.device,
        batch_size=args.batch_size, progress=not args.no_progress, normalisation=args.normalisation,
    )
    print(f"wrote {len(written)} file(s) to {redact(args.out)}")
    return 0
