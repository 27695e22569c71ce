"""What sharding costs and saves on the read side: the same volumes, two store layouts.

Slice-chunked arrays are written as shards (a case's slices inside one object, with an index at
its end); before, every slice was an object of its own. Readers handle both, so the trade-off is
only speed, measured here on the same random volumes written both ways (``write_case(...,
sharded=False)`` for the old layout):

* ``read_slice``: one axial slice, ``store.read_slice``. A per-slice object is one read; a
  shard needs its index first, then the slice's byte range (two reads, two GETs on S3);
* ``whole case``: ``store.read_patch`` of the whole volume, what a training read task does for
  every case that fits its 16 MiB (all but the largest): one read of the shard, against one read
  per slice object.

``--s3`` runs both on a moto S3 server on 127.0.0.1 that the benchmark starts and stops (every
request pays a local HTTP round trip, far less than a real S3 GET, so the gaps on real S3 are
wider where the request counts differ). Times are the best of ``--repeat`` passes over all cases.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import numpy as np

from action_ray.errors import ConfigError

LAYOUTS = (("per-slice objects", False), ("sharded", True))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=8, help="cases per store (default 8)")
    parser.add_argument("--slices", type=int, default=12, help="slices per case (default 12)")
    parser.add_argument("--size", type=int, default=128, help="in-plane matrix (default 128)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over all cases; the best counts (default 3)")
    parser.add_argument("--s3", action="store_true", help="also on a local moto S3 server the benchmark starts "
                                                          "(needs pip install 'moto[server]')")


def write_both(base: str, options: dict | None, volumes: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    """The same cases written once per layout; returns layout name -> store URL."""
    from action_ray.store import create_store
    from action_ray.store.schema import CaseMeta

    urls = {}
    for name, sharded in LAYOUTS:
        url = f"{base}/{'sharded' if sharded else 'per-slice'}"
        store = create_store(url, name="bench-reads", modality="MR", layout="acdc", classes={0: "background", 1: "fg"},
                             storage_options=options)
        for i, (image, label) in enumerate(volumes):
            meta = CaseMeta(case_id=f"case{i:03d}", patient_id=f"p{i:03d}", split="train", spacing=(8.0, 1.4, 1.4),
                            affine=np.eye(4).tolist(), source={"image": "random", "label": "random"})
            store.write_case(meta, image, label, sharded=sharded)
        urls[name] = url
    return urls


def time_reads(url: str, options: dict | None, repeat: int, expected: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Best-of-``repeat`` ms per read_slice and per whole-case read; checks what it read."""
    from action_ray.store import open_store

    store = open_store(url, storage_options=options)
    ids = [info.case_id for info in store.list_cases()]  # metadata cached: only voxel reads are timed
    n_slices = expected[0][0].shape[0]
    per_slice, per_case = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        for case_id in ids:
            for z in range(n_slices):
                store.read_slice(case_id, z)
        per_slice.append((time.perf_counter() - started) / (len(ids) * n_slices))
        started = time.perf_counter()
        wholes = [store.read_patch(case_id, (slice(None),) * 3) for case_id in ids]
        per_case.append((time.perf_counter() - started) / len(ids))
    for (image, label), (want_image, want_label) in zip(wholes, expected):
        if not (np.array_equal(image, want_image) and np.array_equal(label, want_label)):
            raise AssertionError(f"{url}: a case read back differs from what was written")
    return {"slice_ms": 1000 * min(per_slice), "case_ms": 1000 * min(per_case), "cases": len(ids)}


def random_volumes(n: int, slices: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        image = (rng.normal(400, 20, (slices, size, size))).astype(np.float32)
        out.append((image, (image > 410).astype(np.uint8)))
    return out


def run(args: argparse.Namespace) -> int:
    if min(args.cases, args.slices, args.size, args.repeat) < 1:
        raise ConfigError("--cases, --slices, --size and --repeat must be at least 1")
    volumes = random_volumes(args.cases, args.slices, args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp, contextlib.ExitStack() as stack:
        places = [("local disk", tmp, None)]
        if args.s3:
            from action_ray.bench.local_s3 import local_s3_server

            s3 = stack.enter_context(local_s3_server())
            places.append(("S3 (moto)", f"s3://{s3.new_bucket('bench-reads')}", s3.storage_options))
        for where, base, options in places:
            urls = write_both(base, options, volumes)
            for name, _ in LAYOUTS:
                rows.append((where, name, time_reads(urls[name], options, args.repeat, volumes)))
    print(f"bench reads: {args.cases} cases of {args.slices}x{args.size}x{args.size} float32 + uint8 label, "
          f"best of {args.repeat} passes")
    print(f"{'where':<11} {'layout':<18} {'read_slice ms':>13} {'whole case ms':>14}")
    for where, name, numbers in rows:
        print(f"{where:<11} {name:<18} {numbers['slice_ms']:>13.3f} {numbers['case_ms']:>14.3f}")
    for where in dict.fromkeys(row[0] for row in rows):
        old, new = (numbers for w, _, numbers in rows if w == where)
        print(f"{where}: sharded / per-slice objects = read_slice {new['slice_ms'] / old['slice_ms']:.2f}x, "
              f"whole case {new['case_ms'] / old['case_ms']:.2f}x")
    return 0
