"""Ingest throughput against its limit, and peak memory against collection size.

For each collection size the same ACDC-layout files are processed three or four ways, each in a
fresh child process (so peak RSS is that run's alone, imports included):

* ``raw (limit)``: read every NIfTI whole, decode it in one gzip pass, and write the voxels as
  ``.npy``, with the same number of worker threads: what any converter must pay for fetch +
  decode + write, done the fastest way (nibabel's streaming gzip reader is several times slower,
  which made an earlier limit flatter than it was);
* ``ingest threads`` / ``ingest processes``: ``action-ray ingest`` with that dask scheduler.

Each size runs ``--repeat`` rounds (default 3) of every mode, the modes interleaved, and a
mode's best round counts (as ``timeit`` reports): on a shared machine noise only ever adds time,
and one round of a 20-volume run lasts a fraction of a second.

MB/s counts the source bytes as stored (gzip-compressed). Peak RSS is the largest resident
set of the run's process (its ``VmHWM``) or any of its worker processes (``getrusage`` children);
it must not grow with the collection size, because each task holds one case at a time, and
neither may the seconds per volume.

``--s3`` runs the same modes S3 -> S3: the benchmark starts a moto S3 server on 127.0.0.1
(:mod:`action_ray.bench.local_s3`), uploads the generated collection to it, gives each run a
fresh destination prefix and stops the server at the end. The server runs in the benchmark's
own process, so its work is not in a run's peak RSS, but its CPU time competes with the run's
on a small machine; the volumes are smaller by default (64x64x8) to keep it quick.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from action_ray.bench.children import parse_sizes, peak_rss_mb, run_child
from action_ray.errors import ConfigError

MODES = ("raw", "threads", "processes")
#: In-plane matrix and slices of the random volumes: (local, --s3). Locally an ACDC-sized cine
#: frame (ACDC's are about 216-256 x 256 with 6-18 slices), the smallest real scans the recipes
#: cover; ``--size 128 --slices 12`` gives the small volumes earlier tables used, on which the
#: per-case work (validation, statistics, documents) weighs more. On S3 smaller, to stay quick
#: on the in-memory moto server.
DEFAULT_SIZE, DEFAULT_SLICES = (256, 64), (16, 8)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="20,80", help="collection sizes in volumes, comma-separated (default 20,80)")
    parser.add_argument("--workers", type=int, default=2, help="parallel tasks for every mode (default 2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--source", choices=("random", "phantoms"), default="random",
                        help="random: smooth noise volumes (instant); phantoms: action_ray.synth cardiac phantoms")
    parser.add_argument("--size", type=int, help="in-plane matrix of random volumes (default 256; 64 with --s3)")
    parser.add_argument("--slices", type=int, help="slices per random volume (default 16; 8 with --s3)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds per size; each mode runs once per round (modes interleaved) and its "
                             "best time counts, as timeit does (default 3)")
    parser.add_argument("--workdir", help="keep inputs/outputs here instead of a temporary folder")
    parser.add_argument("--s3", action="store_true",
                        help="source and destination on a local moto S3 server the benchmark starts "
                             "(needs pip install 'moto[server]')")


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
def _child_raw(src: str, dst: str, workers: int) -> None:
    """The limit: nibabel decode + ``np.save`` of every file, ``workers`` threads (local or S3)."""
    import gzip
    import io
    from concurrent.futures import ThreadPoolExecutor

    import nibabel as nib
    import numpy as np

    from action_ray.io.nifti import from_nifti_axes
    from action_ray.urls import filesystem_for

    src_fs, src_root = filesystem_for(src)
    dst_fs, dst_root = filesystem_for(dst)
    dst_fs.makedirs(dst_root, exist_ok=True)
    files = sorted(src_fs.glob(f"{src_root}/**/*.nii.gz"))

    def convert(path: str) -> None:
        # the fastest decode there is for a whole file (one read, one gzip pass; nibabel's
        # streaming reader is several times slower), then the voxels written uncompressed
        image = nib.Nifti1Image.from_bytes(gzip.decompress(src_fs.cat_file(path)))
        data = np.asarray(image.dataobj)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(from_nifti_axes(data)))
        name = path.rsplit("/", 1)[-1].replace(".nii.gz", "")
        dst_fs.pipe_file(f"{dst_root}/{name}.npy", buffer.getvalue())

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(convert, files))


def _child_ingest(src: str, dst: str, workers: int, scheduler: str) -> None:
    from action_ray.ingest.runner import IngestOptions, run_ingest

    report = run_ingest(IngestOptions(src=src, dst=dst, layout="acdc", recipe="phantom-cardiac",
                                      workers=workers, scheduler=scheduler, progress=False), say=lambda _: None)
    if report.count("failed"):
        raise SystemExit(f"ingest skipped {report.count('failed')} cases")


def child_main(argv: list[str]) -> None:
    """``python -m action_ray.bench.ingest MODE SRC DST WORKERS``: run once, print JSON."""
    import resource

    mode, src, dst, workers = argv[0], argv[1], argv[2], int(argv[3])
    import action_ray.ingest.runner  # noqa: F401  imports are not part of the throughput
    import action_ray.store  # noqa: F401
    import dask.threaded  # noqa: F401
    import nibabel  # noqa: F401
    if src.startswith("s3://"):
        import s3fs  # noqa: F401

    started = time.perf_counter()
    if mode == "raw":
        _child_raw(src, dst, workers)
    else:
        _child_ingest(src, dst, workers, mode)
    seconds = time.perf_counter() - started
    # worker processes (the processes scheduler) are forked from this one after its exec, so
    # their ru_maxrss is their own peak or this process's size at the fork, never the parent's
    peak_mb = max(peak_rss_mb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def measure(mode: str, src: str, dst: str, workers: int, env: dict[str, str] | None = None) -> dict:
    """One run of ``mode`` in a fresh child process; ``env`` adds variables (the S3 server's)."""
    return run_child("action_ray.bench.ingest", [mode, src, dst, str(workers)], {**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------ driver
def run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.cases, "20,80")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not sizes or min(sizes) < 1 or any(m not in MODES for m in modes):
        raise ConfigError(f"--cases needs positive sizes and --modes a subset of {','.join(MODES)}")
    if args.repeat < 1:
        raise ConfigError("--repeat needs at least 1 round")
    args.size = args.size or DEFAULT_SIZE[args.s3]
    args.slices = args.slices or DEFAULT_SLICES[args.s3]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, contextlib.ExitStack() as stack:
        work = Path(args.workdir or tmp)
        place = stack.enter_context(S3Place.started()) if args.s3 else LocalPlace(work)
        rows = []
        for n in sizes:
            src = work / f"src-{args.source}-{n}{'' if args.source == 'phantoms' else f'-{args.size}x{args.slices}'}"
            if not src.exists():
                if args.source == "phantoms":
                    write_phantom_acdc(src, n, args.workers)
                else:
                    write_random_acdc(src, n, args.size, args.slices)
            n_bytes = source_bytes(src)
            src_url = place.source(src)
            runs: dict[str, list[dict]] = {mode: [] for mode in modes}
            for round_ in range(args.repeat):
                for mode in modes:
                    # a new folder per round: deleting the last round's thousands of files right
                    # before a run slows the file system under it (measured: 2-4x on mkdir)
                    out = place.fresh_output(f"out-{mode}-{n}" + (f"-r{round_}" if round_ else ""))
                    runs[mode].append(measure(mode, src_url, out, args.workers, place.env))
                    place.done_with(out)
            for mode in modes:
                rows.append((n, mode, n_bytes, best_of(runs[mode])))
        print_table(rows, args)
    return 0


def best_of(runs: list[dict]) -> dict:
    """The fastest run's seconds (noise only ever adds time) and the largest peak RSS."""
    return {"seconds": min(r["seconds"] for r in runs), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rounds": len(runs)}


class LocalPlace:
    """Source and outputs on the local disk, in ``work`` (outputs kept for inspection)."""

    def __init__(self, work: Path):
        self.work = work
        self.env: dict[str, str] = {}

    def source(self, local: Path) -> str:
        return str(local)

    def fresh_output(self, name: str) -> str:
        out = self.work / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        return str(out)

    def done_with(self, url: str) -> None:
        pass


class S3Place:
    """Source and outputs in one bucket of a local moto server; outputs are deleted once
    measured, since the server holds every object in memory."""

    def __init__(self, s3):
        from action_ray.urls import filesystem_for

        self.bucket = s3.new_bucket("bench-ingest")
        self.storage_options = s3.storage_options
        self.fs = filesystem_for(f"s3://{self.bucket}", self.storage_options)[0]
        self.env = s3.env

    @classmethod
    @contextlib.contextmanager
    def started(cls):
        from action_ray.bench.local_s3 import local_s3_server

        with local_s3_server() as s3:
            yield cls(s3)

    def source(self, local: Path) -> str:
        """Upload the generated collection (once per size) and return its URL."""
        key = f"{self.bucket}/{local.name}"
        self.fs.put(f"{local}/", key, recursive=True)
        return f"s3://{key}"

    def fresh_output(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def done_with(self, url: str) -> None:
        self.fs.rm(url.removeprefix("s3://"), recursive=True)


def print_table(rows: list, args: argparse.Namespace) -> None:
    shape = "" if args.source == "phantoms" else f" of {args.size}x{args.size}x{args.slices}"
    where = "S3 -> S3 on a local moto server" if args.s3 else "local disk"
    print(f"bench ingest: {args.source} ACDC-layout collections{shape}, {where}, {args.workers} workers, "
          f"cpu_count={os.cpu_count()}; seconds: best of {args.repeat} rounds, peak RSS: largest")
    print(f"{'volumes':>7}  {'mode':<17} {'MB in':>7} {'seconds':>8} {'MB/s':>8} {'vs raw':>7} {'peak RSS MB':>12} "
          f"{'s/volume':>9}")
    raw_speed = {n: b / 1e6 / r["seconds"] for n, mode, b, r in rows if mode == "raw"}
    for n, mode, n_bytes, numbers in rows:
        speed = n_bytes / 1e6 / numbers["seconds"]
        ratio = f"{speed / raw_speed[n]:.2f}" if n in raw_speed else "-"
        name = "raw (limit)" if mode == "raw" else f"ingest {mode}"
        print(f"{n:>7}  {name:<17} {n_bytes / 1e6:>7.2f} {numbers['seconds']:>8.3f} {speed:>8.3f} {ratio:>7} "
              f"{numbers['peak_rss_mb']:>12.0f} {numbers['seconds'] / n:>9.4f}")
    by_mode: dict[str, list[tuple[int, dict]]] = {}
    for n, mode, _, numbers in sorted(rows, key=lambda row: row[0]):
        by_mode.setdefault(mode, []).append((n, numbers))
    for mode, runs in by_mode.items():
        (small, first), (large, last) = runs[0], runs[-1]
        if large > small:
            print(f"peak RSS {mode}: largest/smallest collection = {last['peak_rss_mb'] / first['peak_rss_mb']:.2f}x "
                  f"(flat means bounded memory)")
            per_volume = (last["seconds"] / large) / (first["seconds"] / small)
            print(f"s/volume {mode}: {large}/{small} volumes = {per_volume:.2f}x (flat: <= 1.3x)")


if __name__ == "__main__":
    child_main(sys.argv[1:])
