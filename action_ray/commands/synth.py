"""``action-ray synth``: write synthetic cardiac (ACDC layout) or liver (LiTS layout) phantoms.

Case ``i`` uses a seed derived from ``(--seed, i)`` alone, so the files are byte-identical for
any ``--workers``; cases whose files already exist are skipped, so an interrupted run is
resumed by running the same command again.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from action_ray.synth.collection import KINDS, CollectionRequest


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="cardiac -> ACDC layout, liver -> LiTS layout")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--cases", type=int, required=True, help="number of patients (cardiac) or volumes (liver)")
    parser.add_argument("--size", type=int, choices=(128, 256), default=128, help="in-plane matrix (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="collection seed; case i uses a seed derived from (seed, i)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")


def request_from(args: argparse.Namespace) -> CollectionRequest:
    return CollectionRequest(kind=args.kind, out=Path(args.out), cases=args.cases, size=args.size,
                             seed=args.seed, workers=args.workers)


def run(args: argparse.Namespace) -> int:
    from action_ray.synth.collection import write_collection

    request = request_from(args)
    result = write_collection(request)
    print(f"wrote {result.written} {request.unit}(s), skipped {result.skipped} already complete, "
          f"{request.layout} layout in {request.out}")
    return 0
