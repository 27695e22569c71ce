"""What a growing store costs before any voxel is read: listing, ``info`` and the read plan.

Training and ``action-ray info`` touch every case's metadata on the driver, so their cost grows
with the number of cases; it must grow no faster than that (the cost *per case* stays flat) or
a store of 10,000 cases takes minutes to open instead of seconds. For each store size this
benchmark builds a store of tiny cases (a few slices of a small matrix: the cost measured here
is per case, not per voxel) through the store's own writer (``write_case``, then ``finalize``
as ingest ends), and then measures, in one fresh child process per size:

* ``list``: ``open_store(url).list_cases()``;
* ``info``: ``summarise(open_store(url))``, what ``action-ray info`` prints;
* ``plan``: the trainer's read plan: ``label_split`` of the store, then ``build_streams`` (the
  labelled and unlabelled Ray Datasets and their read tasks), never executed. Ray Data cannot
  build a Dataset without a connected Ray, so the child first starts a local Ray of one CPU;
  that start-up is not timed.

Each step runs ``--repeat`` times and the fastest run counts (the one least disturbed by other
load; every run reads the same files, so all but the first read them from the page cache).
Peak RSS is the child's own (``getrusage`` self): planning runs in the driver, and the Ray
processes the ``plan`` step starts are not its children in the rusage sense. The RSS the child
had when the step began is printed next to it, so the growth a step causes is visible; unlike
ingest's, it may grow with the store, since a listing holds every case's metadata.

Building a store of 10,000 tiny cases takes minutes (``write_case`` makes a few dozen small
writes per case); ``--workdir`` keeps the stores, and a later run reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from action_ray.bench.children import parse_sizes, peak_rss_mb, run_child
from action_ray.errors import ConfigError

STEPS = ("list", "info", "plan")
#: The recipe the tiny cases are written with (classes and the normalisation the plan resolves).
RECIPE = "phantom-cardiac"
#: Patients are assigned 7/1/2 of every 10 to train/val/test, two cases (ED, ES) each, like ACDC.
SPLIT_CYCLE = ("train",) * 7 + ("val",) + ("test",) * 2
BUILT_SUFFIX = ".built"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="1000,10000",
                        help="store sizes in cases, comma-separated (default 1000,10000)")
    parser.add_argument("--slices", type=int, default=2, help="slices per tiny case (default 2)")
    parser.add_argument("--size", type=int, default=16, help="in-plane matrix of a tiny case (default 16)")
    parser.add_argument("--label-ratio", type=float, default=0.1,
                        help="labelled fraction of train patients in the read plan (default 0.1)")
    parser.add_argument("--writers", type=int, default=8,
                        help="threads writing the tiny cases while a store is built (default 8)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="time each step this many times in the child and keep the fastest (default 3)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"subset of {','.join(STEPS)} (default all)")
    parser.add_argument("--workdir", help="keep the built stores here and reuse them on the next run")


# ----------------------------------------------------------------------------------- stores
def build_store(url: str, n_cases: int, size: int, slices: int, writers: int) -> None:
    """A store of ``n_cases`` tiny labelled cases written by ``write_case``, indexed by ``finalize``."""
    import numpy as np

    from action_ray.recipes import load_recipe
    from action_ray.store import CaseMeta, create_store

    recipe = load_recipe(RECIPE)
    store = create_store(url, name=f"bench-catalog-{n_cases}", modality=recipe.modality, layout="acdc",
                         classes=recipe.classes,
                         extra={"recipe": recipe.name,
                                "normalisation": recipe.normalisation.to_dict()})
    rng = np.random.default_rng(0)
    image = rng.normal(400, 50, size=(slices, size, size)).astype(np.float32)
    label = rng.integers(0, len(recipe.classes), size=image.shape).astype(np.uint8)
    affine = np.diag([1.4, 1.4, 8.0, 1.0]).tolist()

    def write(index: int) -> None:
        patient = f"patient{index // 2:05d}"
        meta = CaseMeta(case_id=f"{patient}_frame{1 + 9 * (index % 2):02d}", patient_id=patient,
                        split=SPLIT_CYCLE[(index // 2) % len(SPLIT_CYCLE)], spacing=(8.0, 1.4, 1.4),
                        affine=affine, source={"image": "bench-catalog", "label": "bench-catalog"})
        store.write_case(meta, image, label)

    with ThreadPoolExecutor(max(1, writers)) as pool:
        list(pool.map(write, range(n_cases)))
    store.finalize()


def ensure_store(work: Path, n_cases: int, args: argparse.Namespace) -> tuple[str, float | None]:
    """The store of ``n_cases`` (built now, or reused from an earlier run); seconds spent building."""
    url = str(work / f"catalog-{n_cases}-{args.slices}x{args.size}.zarr")
    built = Path(url + BUILT_SUFFIX)
    if built.exists():
        return url, None
    subprocess.run(["rm", "-rf", url], check=True)
    started = time.perf_counter()
    build_store(url, n_cases, args.size, args.slices, args.writers)
    built.write_text("complete\n")
    return url, time.perf_counter() - started


# ---------------------------------------------------------------------------- child process
def _rss_now_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _plan(url: str, label_ratio: float) -> dict:
    """The training read plan exactly as ``train.trainer`` builds it (split, then the streams)."""
    from action_ray.config import load_config
    from action_ray.data.splits import label_split
    from action_ray.data.streams import StreamSettings, build_streams
    from action_ray.store import open_store

    config = load_config(None, [f"data.label_ratio={label_ratio}", "data.labelled_patients=null"])
    split = label_split(open_store(url), label_ratio=config.data.label_ratio, seed=config.data.split_seed)
    streams = build_streams(url, None, split, StreamSettings.from_config(config.data))
    return {"read_tasks": streams.meta.labelled_read_tasks + streams.meta.unlabelled_read_tasks}


def _timed(repeat: int, step, *args) -> dict:
    """The fastest of ``repeat`` runs of ``step`` (the least disturbed by other load)."""
    rss_before = _rss_now_mb()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        detail = step(*args)
        best = min(best, time.perf_counter() - started)
    return {"seconds": best, "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb(), **detail}


def child_main(argv: list[str]) -> None:
    """``python -m action_ray.bench.catalog URL LABEL_RATIO STEPS REPEAT``: time each step, print JSON."""
    url, label_ratio, steps, repeat = argv[0], float(argv[1]), argv[2].split(","), int(argv[3])
    from action_ray.store import open_store  # imports are not part of what is measured
    from action_ray.store.summary import summarise

    results = {}
    if "list" in steps:
        results["list"] = _timed(repeat, lambda: {"cases": len(open_store(url).list_cases())})
    if "info" in steps:
        results["info"] = _timed(repeat, lambda: {"cases": summarise(open_store(url))["n_cases"]})
    if "plan" in steps:
        import ray.data

        import action_ray.data.source  # noqa: F401  imports are not part of what is measured
        from action_ray.config import load_config  # noqa: F401
        from action_ray.data.streams import build_streams  # noqa: F401
        from action_ray.ray_session import connect_or_start

        connect_or_start(1, log=lambda _: None, worker_logs=False)  # not timed: Ray Data needs a connection
        ray.data.DataContext.get_current()  # its first call imports Ray Data's issue detectors: not timed
        results["plan"] = _timed(repeat, _plan, url, label_ratio)
    print(json.dumps(results))


def measure(url: str, label_ratio: float, steps: list[str], repeat: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a local Ray of one CPU
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return run_child("action_ray.bench.catalog", [url, str(label_ratio), ",".join(steps), str(repeat)], env)


# ------------------------------------------------------------------------------------ driver
def run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.cases, "1000,10000")
    if not sizes or min(sizes) < len(SPLIT_CYCLE) * 2:
        raise ConfigError(f"--cases needs sizes of at least {len(SPLIT_CYCLE) * 2} "
                          "(every split must hold a patient)")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not steps or any(s not in STEPS for s in steps):
        raise ConfigError(f"--steps {args.steps!r}: choose from {','.join(STEPS)}")
    if args.repeat < 1 or args.slices < 1 or args.size < 1 or not 0 < args.label_ratio <= 1:
        raise ConfigError("--repeat, --slices and --size must be positive and --label-ratio in (0, 1]")
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in sizes:
            url, build_seconds = ensure_store(work, n, args)
            rows.append((n, build_seconds, measure(url, args.label_ratio, steps, args.repeat)))
        print_table(rows, args)
    return 0


def print_table(rows: list, args: argparse.Namespace) -> None:
    print(f"bench catalog: local stores of tiny cases ({args.slices} slices of {args.size}x{args.size}: "
          f"the cost is per case, not per voxel), cpu_count={os.cpu_count()}")
    print("list = open_store + list_cases; info = open_store + summarise; plan = label_split + build_streams "
          "(Datasets and read tasks, never executed), after a local Ray start that is not timed")
    print(f"{'cases':>7}  {'step':<5} {'seconds':>9} {'ms/case':>9} {'RSS before MB':>14} {'peak RSS MB':>12}  note")
    for n, build_seconds, result in rows:
        for step in (s for s in STEPS if s in result):
            numbers = result[step]
            note = f"{numbers['read_tasks']} read tasks" if step == "plan" else f"{numbers['cases']} cases"
            print(f"{n:>7}  {step:<5} {numbers['seconds']:>9.3f} {1000 * numbers['seconds'] / n:>9.3f} "
                  f"{numbers['rss_before_mb']:>14.0f} {numbers['peak_rss_mb']:>12.0f}  {note}")
        built = "reused" if build_seconds is None else f"built in {build_seconds:.1f} s"
        print(f"{n:>7}  store {built}")
    ordered = sorted(rows, key=lambda row: row[0])
    (small, _, first), (large, _, last) = ordered[0], ordered[-1]
    if large > small:
        for step in (s for s in STEPS if s in last):
            ratio = (last[step]["seconds"] / large) / (first[step]["seconds"] / small)
            print(f"per-case time {step}: {large}/{small} cases = {ratio:.2f}x (flat: <= 1.3x); "
                  f"peak RSS {last[step]['peak_rss_mb'] / first[step]['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    child_main(sys.argv[1:])
