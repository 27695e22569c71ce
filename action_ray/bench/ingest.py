"""Ingest throughput against its limit, and peak memory against collection size.

For each collection size the same ACDC-layout files are processed three or four ways, each in a
fresh child process (so peak RSS is that run's alone, imports included):

* ``raw (limit)``: read every NIfTI whole, decode it in one gzip pass, and write the voxels as
  ``.npy``, with the same number of worker threads: what any converter must pay for fetch +
  decode + write, done the fastest way (nibabel's streaming gzip reader is several times slower,
  which made an earlier limit flatter than it was);
* ``ingest threads`` / ``ingest processes``: ``action-ray ingest`` with that dask scheduler.

MB/s counts the source bytes as stored (gzip-compressed). Peak RSS is the largest resident
set of the run's process or any of its worker processes (``getrusage`` self and children);
it must not grow with the collection size, because each task holds one case at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from action_ray.errors import ConfigError

MODES = ("raw", "threads", "processes")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="20,80", help="collection sizes in volumes, comma-separated (default 20,80)")
    parser.add_argument("--workers", type=int, default=2, help="parallel tasks for every mode (default 2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--source", choices=("random", "phantoms"), default="random",
                        help="random: smooth noise volumes (instant); phantoms: action_ray.synth cardiac phantoms")
    parser.add_argument("--size", type=int, default=128, help="in-plane matrix of random volumes (default 128)")
    parser.add_argument("--slices", type=int, default=12, help="slices per random volume (default 12)")
    parser.add_argument("--workdir", help="keep inputs/outputs here instead of a temporary folder")


# ----------------------------------------------------------------------------------- inputs
def write_random_acdc(out: Path, n_volumes: int, size: int, slices: int, seed: int = 0) -> None:
    """ACDC layout with smooth-plus-noise float32 images (gzip ratio close to real MR) and labels."""
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    for patient in range(1, (n_volumes + 1) // 2 + 1):
        pdir = out / "training" / f"patient{patient:03d}"
        pdir.mkdir(parents=True, exist_ok=True)
        # an odd collection size ends with a one-volume patient: ED == ES, which ingest reads as one case
        frames = (1, 10)[: n_volumes - 2 * (patient - 1)]
        (pdir / "Info.cfg").write_text(f"ED: {frames[0]}\nES: {frames[-1]}\nGroup: NOR\nNbFrame: 20\n")
        for frame in frames:
            coarse = rng.normal(size=(size // 16, size // 16, slices)).astype(np.float32)
            image = zoom(coarse, (16, 16, 1), order=1) * 200 + 400 + rng.normal(0, 20, (size, size, slices))
            label = np.digitize(image, [450, 550, 650]).astype(np.uint8)
            affine = np.diag([1.4, 1.4, 8.0, 1.0])
            stem = pdir / f"patient{patient:03d}_frame{frame:02d}"
            nib.save(nib.Nifti1Image(image.astype(np.float32), affine), f"{stem}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), f"{stem}_gt.nii.gz")


def write_phantom_acdc(out: Path, n_volumes: int, workers: int) -> None:
    """Cardiac phantoms, as ``action-ray synth`` writes them (two volumes per patient)."""
    from action_ray.synth.collection import CollectionRequest, write_collection

    write_collection(CollectionRequest("cardiac", out, cases=(n_volumes + 1) // 2, workers=workers), progress=False)


def source_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.nii*"))


# ---------------------------------------------------------------------------- child process
def _child_raw(src: Path, dst: Path, workers: int) -> None:
    """The limit: nibabel decode + ``np.save`` of every file, ``workers`` threads."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor

    import nibabel as nib
    import numpy as np

    from action_ray.io.nifti import from_nifti_axes

    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.rglob("*.nii.gz"))

    def convert(path: Path) -> None:
        # the fastest decode there is for a whole file (one read, one gzip pass; nibabel's
        # streaming reader is several times slower), then the voxels written uncompressed
        image = nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
        data = np.asarray(image.dataobj)
        np.save(dst / (path.name.replace(".nii.gz", "") + ".npy"), from_nifti_axes(data))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(convert, files))


def _child_ingest(src: Path, dst: Path, workers: int, scheduler: str) -> None:
    from action_ray.ingest.runner import IngestOptions, run_ingest

    report = run_ingest(IngestOptions(src=str(src), dst=str(dst), layout="acdc", recipe="phantom-cardiac",
                                      workers=workers, scheduler=scheduler, progress=False), say=lambda _: None)
    if report.count("failed"):
        raise SystemExit(f"ingest skipped {report.count('failed')} cases")


def child_main(argv: list[str]) -> None:
    """``python -m action_ray.bench.ingest MODE SRC DST WORKERS``: run once, print JSON."""
    import resource

    mode, src, dst, workers = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    import action_ray.ingest.runner  # noqa: F401  imports are not part of the throughput
    import action_ray.store  # noqa: F401
    import dask.threaded  # noqa: F401
    import nibabel  # noqa: F401

    started = time.perf_counter()
    if mode == "raw":
        _child_raw(src, dst, workers)
    else:
        _child_ingest(src, dst, workers, mode)
    seconds = time.perf_counter() - started
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024}))


def measure(mode: str, src: Path, dst: Path, workers: int) -> dict:
    result = subprocess.run([sys.executable, "-m", "action_ray.bench.ingest", mode, str(src), str(dst), str(workers)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bench child {mode} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ driver
def run(args: argparse.Namespace) -> int:
    try:
        sizes = [int(s) for s in str(args.cases).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--cases {args.cases!r}: give comma-separated integers, e.g. 20,80") from None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not sizes or min(sizes) < 1 or any(m not in MODES for m in modes):
        raise ConfigError(f"--cases needs positive sizes and --modes a subset of {','.join(MODES)}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(args.workdir or tmp)
        rows = []
        for n in sizes:
            src = work / f"src-{args.source}-{n}"
            if not src.exists():
                if args.source == "phantoms":
                    write_phantom_acdc(src, n, args.workers)
                else:
                    write_random_acdc(src, n, args.size, args.slices)
            n_bytes = source_bytes(src)
            for mode in modes:
                out = work / f"out-{mode}-{n}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                numbers = measure(mode, src, out, args.workers)
                rows.append((n, mode, n_bytes, numbers))
        print_table(rows, args)
    return 0


def print_table(rows: list, args: argparse.Namespace) -> None:
    print(f"bench ingest: {args.source} ACDC-layout collections, {args.workers} workers, cpu_count={os.cpu_count()}")
    print(f"{'volumes':>7}  {'mode':<17} {'MB in':>7} {'seconds':>8} {'MB/s':>8} {'vs raw':>7} {'peak RSS MB':>12}")
    raw_speed = {n: b / 1e6 / r["seconds"] for n, mode, b, r in rows if mode == "raw"}
    for n, mode, n_bytes, numbers in rows:
        speed = n_bytes / 1e6 / numbers["seconds"]
        ratio = f"{speed / raw_speed[n]:.2f}" if n in raw_speed else "-"
        name = "raw (limit)" if mode == "raw" else f"ingest {mode}"
        print(f"{n:>7}  {name:<17} {n_bytes / 1e6:>7.2f} {numbers['seconds']:>8.2f} {speed:>8.3f} {ratio:>7} "
              f"{numbers['peak_rss_mb']:>12.0f}")
    by_mode: dict[str, list[float]] = {}
    for n, mode, _, numbers in sorted(rows):
        by_mode.setdefault(mode, []).append(numbers["peak_rss_mb"])
    for mode, peaks in by_mode.items():
        if len(peaks) > 1:
            print(f"peak RSS {mode}: largest/smallest collection = {peaks[-1] / peaks[0]:.2f}x "
                  f"(flat means bounded memory)")


if __name__ == "__main__":
    child_main(sys.argv[1:])
