"""Write synthetic cardiac (ACDC layout) or liver (LiTS layout) phantoms to a folder.

Case ``i`` uses a seed derived from ``(--seed, i)`` alone, so the files are byte-identical for
any ``--workers``; cases whose files already exist are skipped, so an interrupted run is
resumed by running the same command again.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from action_ray.errors import ActionRayError

KINDS = ("cardiac", "liver")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="cardiac -> ACDC layout, liver -> LiTS layout")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--cases", type=int, required=True, help="number of patients (cardiac) or volumes (liver)")
    parser.add_argument("--size", type=int, choices=(128, 256), default=128, help="in-plane matrix (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="collection seed; case i uses a seed derived from (seed, i)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` in a collection with seed ``seed``: independent of scheduling."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0])


def _is_complete(kind: str, out: Path, index: int) -> bool:
    from action_ray.synth import layouts

    if kind == "cardiac":
        return layouts.acdc_patient_complete(out, index)
    return layouts.lits_case_complete(out, index)


def make_case(kind: str, out: str, index: int, seed: int, size: int) -> int:
    """Generate and write case ``index`` (a top-level function so process pools can pickle it)."""
    from action_ray.synth import layouts

    if kind == "cardiac":
        from action_ray.synth.cardiac import cardiac_case

        layouts.write_acdc_patient(Path(out), index, cardiac_case(case_seed(seed, index), size))
    else:
        from action_ray.synth.liver import liver_case

        layouts.write_lits_case(Path(out), index, liver_case(case_seed(seed, index), size))
    return index


def _check_args(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ActionRayError(f"--out {out} exists and is not a folder; pass a folder path")
    if args.cases < 1:
        raise ActionRayError(f"--cases must be >= 1, got {args.cases}")
    if args.workers < 1:
        raise ActionRayError(f"--workers must be >= 1, got {args.workers}")
    if args.seed < 0:
        raise ActionRayError(f"--seed must be >= 0, got {args.seed}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ActionRayError(f"cannot create --out {out}: {exc.strerror}") from exc
    return out


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    out = _check_args(args)
    pending = [i for i in range(args.cases) if not _is_complete(args.kind, out, i)]
    skipped = args.cases - len(pending)
    unit = "patient" if args.kind == "cardiac" else "volume"
    with tqdm(total=args.cases, initial=skipped, unit=unit, desc=f"synth {args.kind}") as bar:
        if args.workers == 1 or len(pending) <= 1:
            for index in pending:
                make_case(args.kind, str(out), index, args.seed, args.size)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(args.workers, len(pending))) as pool:
                futures = [pool.submit(make_case, args.kind, str(out), i, args.seed, args.size) for i in pending]
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
    layout = "ACDC" if args.kind == "cardiac" else "LiTS"
    print(f"wrote {len(pending)} {unit}(s), skipped {skipped} already complete, {layout} layout in {out}")
    return 0
