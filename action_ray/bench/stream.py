"""Slices/s delivered into a Ray Train worker vs reading the store directly, vs the train step.

Three ways of getting the same normalised, resized slices out of one store, timed in one run:

* ``direct read_slice``: a Python loop calling ``store.read_slice`` per slice (one chunk read
  and decode per slice) — what a naive per-slice Dataset would do;
* ``direct chunk slabs``: one ``read_patch`` per case slab (the read pattern our read tasks
  use) in one process — the practical ceiling on this machine;
* ``ray data -> driver``: the training Dataset iterated in the driver (no Train);
* ``ray data -> TorchTrainer``: the same Dataset handed to ``TorchTrainer(datasets=...)`` and
  iterated with ``iter_torch_batches`` inside 1–2 workers (``--cpus-per-worker`` 0.5 leaves CPU
  for the read tasks; see docs/ray-notes.md §3 on CPU starvation).

Both direct loops do the same normalisation and resize as the read tasks, so the ratios isolate
the cost of Ray Data and Train ingest. The first Ray epoch (worker start-up) is reported
separately; rates are over the later epochs. ``--step-rate`` (slices/s your train step consumes,
e.g. from ``action-ray bench step``) adds the headroom ratio: above 1 the data path keeps up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from action_ray.commands.options import add_storage_option, storage_options_from


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="store URL; default: a temporary store of phantom-like volumes")
    add_storage_option(parser, "fsspec option for the store (repeatable)")
    parser.add_argument("--cases", type=int, default=8, help="temporary store: number of cases (default 8)")
    parser.add_argument("--slices", type=int, default=32, help="temporary store: slices per case (default 32)")
    parser.add_argument("--size", type=int, default=224, help="temporary store: in-plane size (default 224)")
    parser.add_argument("--max-cases", type=int, default=None, help="use at most this many train cases")
    parser.add_argument("--output-size", type=int, default=256, help="training slice size (default 256)")
    parser.add_argument("--workers", type=int, default=1, help="Train workers (default 1)")
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="logical CPUs for a local Ray cluster (default: 2x the machine's cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="Ray epochs; the first is warm-up (default 3)")
    parser.add_argument("--step-rate", type=float, default=None,
                        help="slices/s the train step consumes; prints the data-path headroom")


def run(args: argparse.Namespace) -> int:
    for key, value in {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                       "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_DATA_LOG_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)  # before ray.init: workers inherit them
    from action_ray.errors import ConfigError
    from action_ray.urls import redact

    if args.epochs < 2:
        raise ConfigError("--epochs must be at least 2 (the first epoch is warm-up)")
    storage_options = storage_options_from(args)
    with tempfile.TemporaryDirectory(prefix="action-ray-bench-stream-") as tmp:
        url = args.store or write_phantom_store(f"{tmp}/store.zarr", args.cases, args.slices, args.size)
        print(f"store: {redact(url)}")
        results = measure(url, storage_options, args, Path(tmp))
    print_table(results, args.step_rate)
    return 0


# ------------------------------------------------------------------------------------ the store
def write_phantom_store(url: str, cases: int, slices: int, size: int, seed: int = 0) -> str:
    """Cases of nested ellipses (classes 1-3) over noisy background, MR-like arbitrary gain."""
    import numpy as np

    from action_ray.store import CaseMeta, create_store

    store = create_store(url, name="bench-phantoms", modality="MR", layout="folder",
                         classes={0: "background", 1: "outer", 2: "middle", 3: "inner"})
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                             indexing="ij")
    for index in range(cases):
        centre = rng.uniform(-0.2, 0.2, size=3)
        radii = rng.uniform(0.5, 0.9, size=3)
        r = np.sqrt(((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                    + ((xx - centre[2]) / radii[2]) ** 2)
        label = np.select([r < 0.4, r < 0.7, r < 1.0], [3, 2, 1], 0).astype(np.uint8)
        gain = float(np.exp(rng.uniform(np.log(50), np.log(2000))))
        image = (gain * (0.2 + 0.25 * label + rng.normal(0, 0.05, size=label.shape))).astype(np.float32)
        meta = CaseMeta(f"case{index:03d}", f"patient{index:03d}", "train", (8.0, 1.4, 1.4),
                        np.eye(4).tolist(), {"image": "synthetic"})
        store.write_case(meta, image, label)
    return url


# ------------------------------------------------------------------------------- measurements
def _direct_rates(url: str, storage_options: dict, case_ids: list[str], output_size: int) -> dict[str, float]:
    """The two single-process loops, with the read tasks' normalisation and resize."""
    from action_ray.data.resize import resize_slices
    from action_ray.io.normalise import normalise_array, resolve_spec
    from action_ray.store import open_store

    store = open_store(url, storage_options or None)
    spec = resolve_spec(store.dataset_meta)
    size = (output_size, output_size)
    infos = [store.case(c) for c in case_ids]

    def finish(image, label, info):
        image = normalise_array(image, spec, info.stats, info.case_id)
        return resize_slices(image, label, size)

    start, rows = time.perf_counter(), 0
    for info in infos:
        for z in range(info.shape[0]):
            image, label = store.read_slice(info.case_id, z)
            finish(image[None], None if label is None else label[None], info)
            rows += 1
    per_slice = rows / (time.perf_counter() - start)
    start, rows = time.perf_counter(), 0
    for info in infos:
        image, label = store.read_patch(info.case_id, (slice(None), slice(None), slice(None)))
        finish(image, label, info)
        rows += info.shape[0]
    per_slab = rows / (time.perf_counter() - start)
    return {"direct read_slice loop": per_slice, "direct chunk-slab loop": per_slab}


def _timed_epochs(batches_per_epoch, epochs: int) -> tuple[float, float]:
    """(first epoch seconds, rows/s over the remaining epochs) for a callable epoch iterator."""
    first = rows = 0
    later = 0.0
    for epoch in range(epochs):
        start, count = time.perf_counter(), 0
        for batch in batches_per_epoch():
            count += len(batch["z"])
        elapsed = time.perf_counter() - start
        if epoch == 0:
            first = elapsed
        else:
            later += elapsed
            rows += count
    return first, rows / later if later else 0.0


def _train_loop(config: dict) -> None:
    """Per-worker ingest loop: iterate the shard, record rows and time per epoch to a file."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    context = ray.train.get_context()

    def epoch():
        return shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True,
                                        **config["iter_kwargs"])

    first, rate = _timed_epochs(epoch, config["epochs"])
    out = Path(config["out_dir"]) / f"rank{context.get_world_rank()}.json"
    out.write_text(json.dumps({"first_epoch_s": first, "rows_per_s": rate}))


def measure(url: str, storage_options: dict, args: argparse.Namespace, tmp: Path) -> dict:
    """All rates for one store: the direct loops, then Ray Data in the driver and in Train."""
    import ray

    from action_ray.store import open_store

    store = open_store(url, storage_options or None)
    case_ids = [c.case_id for c in store.list_cases(split="train")][: args.max_cases]
    if not case_ids:
        from action_ray.errors import StoreError
        from action_ray.urls import redact

        raise StoreError(f"store {redact(url)} has no complete train cases to stream; ingest some first")
    results: dict = {"rates": _direct_rates(url, storage_options, case_ids, args.output_size)}

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=args.num_cpus or 2 * (os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        _ray_rates(url, storage_options, case_ids, args, tmp, results)
    finally:
        if started_ray:
            ray.shutdown()
    return results


def _ray_rates(url: str, storage_options: dict, case_ids: list[str], args: argparse.Namespace,
               tmp: Path, results: dict) -> None:
    """Ray Data iterated in the driver, then inside TorchTrainer workers; fills ``results``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from action_ray.data.source import VolumeSliceDatasource
    from action_ray.data.streams import dataset_from_source, train_data_config

    source = VolumeSliceDatasource(url, storage_options, case_ids, with_label=True,
                                   output_size=(args.output_size, args.output_size))
    results["rows_per_epoch"] = source.num_rows()
    results["read_tasks"] = len(source.plan_tasks())
    dataset = dataset_from_source(source, shuffle="blocks")
    iter_kwargs = {"local_shuffle_buffer_size": 4 * args.batch_size}
    first, rate = _timed_epochs(
        lambda: dataset.iter_batches(batch_size=args.batch_size, batch_format="numpy", **iter_kwargs),
        args.epochs)
    results["rates"]["ray data -> driver"] = rate
    results["first_epoch_s"] = {"ray data -> driver": first}

    out_dir = tmp / "ranks"
    out_dir.mkdir()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"batch_size": args.batch_size, "epochs": args.epochs,
                           "iter_kwargs": iter_kwargs, "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=RunConfig(name=f"bench-stream-{os.getpid()}", storage_path=str(tmp / "train")),
        datasets={"train": dataset_from_source(source, shuffle="blocks")},
        dataset_config=train_data_config(),
    )
    trainer.fit()
    ranks = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    label = f"ray data -> TorchTrainer ({args.workers} worker{'s' if args.workers > 1 else ''})"
    results["rates"][label] = sum(r["rows_per_s"] for r in ranks)
    results["first_epoch_s"][label] = max(r["first_epoch_s"] for r in ranks)


def print_table(results: dict, step_rate: float | None) -> None:
    rates = results["rates"]
    reference = rates["direct chunk-slab loop"]
    print(f"rows per epoch: {results['rows_per_epoch']}, read tasks: {results['read_tasks']}")
    header = f"{'path':<40} {'slices/s':>10} {'vs slab loop':>13}"
    if step_rate:
        header += f" {'vs step':>9}"
    print(header)
    print("-" * len(header))
    for name, rate in rates.items():
        line = f"{name:<40} {rate:>10.1f} {rate / reference:>12.2f}x"
        if step_rate:
            line += f" {rate / step_rate:>8.2f}x"
        print(line)
    if step_rate:
        print(f"{'train step consumption (--step-rate)':<40} {step_rate:>10.1f}")
    for name, seconds in results.get("first_epoch_s", {}).items():
        print(f"first epoch (start-up) of {name}: {seconds:.1f} s")
