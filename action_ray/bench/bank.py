"""Share of a P2 step spent in the global bank enqueue (all_gather + ring write), 1 vs N workers.

Each configuration runs the real P2 step (`p2_step`, which enqueues into the global *and* the
per-position local bank) inside a `TorchTrainer` (gloo on CPU, nccl on GPU) on synthetic
batches, so only the method is timed, not the data path. The enqueue calls are timed by
wrapping the banks' ``enqueue`` (after a barrier, so waiting for a slower rank is reported apart);
on a GPU the clock waits for the device around them. Printed side by side: step time, enqueue
time and the enqueue's share of the step, per worker count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare (default: 1 2)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--config", default="cpu-demo", help="preset or YAML whose P2 settings are used")
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--gpu", action="store_true", help="GPU workers (nccl)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _timed(fn, clock: list[float], waits: list[float], sync):
    """``fn`` timed after a barrier, so the enqueue time is the all_gather + write itself and
    the time spent waiting for slower ranks (load imbalance) is recorded apart in ``waits``."""
    from action_ray.distributed import world_size

    def wrapper(*args, **kwargs):
        sync()
        start = time.perf_counter()
        if world_size() > 1:
            import torch.distributed as dist

            dist.barrier()
        ready = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        waits.append(ready - start)
        clock.append(time.perf_counter() - ready)
        return out

    return wrapper


def bank_worker(loop_config: dict) -> dict:
    """Per-worker: P2 steps on random batches; returns mean step and enqueue seconds."""
    import torch

    from action_ray.config import config_from_dict
    from action_ray.train.loop import _device
    from action_ray.train.state import build_state
    from action_ray.train.steps import p2_step

    config = config_from_dict(loop_config["config"])
    device = _device(config)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    state = build_state(config, 4, device, "p2")
    enqueue_times: list[float] = []
    wait_times: list[float] = []
    for bank in state.banks().values():
        bank.enqueue = _timed(bank.enqueue, enqueue_times, wait_times, sync)
    size, n = config.data.train_side, config.data.pretrain_batch
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand((n, 1, size, size), generator=g),
             "label": torch.randint(0, 4, (n, size, size), generator=g),
             "labelled": torch.arange(n) < config.data.pretrain_labelled_batch}
    step_times: list[float] = []
    for index in range(loop_config["warmup"] + loop_config["steps"]):
        if index == loop_config["warmup"]:
            enqueue_times.clear()
            wait_times.clear()
        sync()
        start = time.perf_counter()
        p2_step(state, batch, config)
        sync()
        if index >= loop_config["warmup"]:
            step_times.append(time.perf_counter() - start)
    return {"step_s": statistics.mean(step_times), "enqueue_s": sum(enqueue_times) / len(step_times),
            "wait_s": sum(wait_times) / len(step_times),
            "bank_size": int(state.global_bank.keys.shape[0])}


def measure(config, workers: int, steps: int, warmup: int) -> dict:
    """One TorchTrainer fit with ``workers`` workers; rank 0's timings."""
    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = config.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    with tempfile.TemporaryDirectory(prefix="action-ray-bench-bank-") as storage:
        trainer = TorchTrainer(
            bank_worker,
            train_loop_config={"config": config.to_dict(), "steps": steps, "warmup": warmup},
            torch_config=TorchConfig(backend=t.resolved_backend, timeout_s=120),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=t.use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name=f"bench-bank-{workers}", storage_path=storage),
        )
        return trainer.fit().return_value


def run(args: argparse.Namespace) -> int:
    for key, value in {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                       "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}.items():
        os.environ.setdefault(key, value)
    import ray

    from action_ray.config import load_config
    from action_ray.errors import ConfigError

    if args.steps < 1 or min(args.workers) < 1:
        raise ConfigError("--steps and every --workers value must be >= 1")
    overrides = [f"train.cpus_per_worker={args.cpus_per_worker}", f"train.use_gpu={str(args.gpu).lower()}"]
    rows = []
    started_ray = False
    if not ray.is_initialized():
        need = int(max(args.workers) * args.cpus_per_worker) + 2
        ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                 object_store_memory=256 * 2**20, log_to_driver=False, configure_logging=False)
        started_ray = True
    try:
        for workers in args.workers:
            config = load_config(args.config, overrides + [f"train.num_workers={workers}", *args.overrides])
            result = measure(config, workers, args.steps, args.warmup)
            rows.append((workers, result))
            print(f"measured {workers} worker(s)", flush=True)
    finally:
        if started_ray:
            ray.shutdown()
    device = "GPU (nccl)" if args.gpu else "CPU (gloo)"
    print(f"\nbench bank: P2 step ({args.config}), {args.steps} timed steps, {device}")
    print(f"{'workers':>8} {'bank K':>7} {'step ms':>9} {'enqueue ms':>11} {'enqueue share':>14} {'peer wait ms':>13}")
    for workers, r in rows:
        share = r["enqueue_s"] / r["step_s"] if r["step_s"] else float("nan")
        print(f"{workers:>8} {r['bank_size']:>7} {r['step_s'] * 1e3:>9.2f} {r['enqueue_s'] * 1e3:>11.3f} "
              f"{share:>13.2%} {r['wait_s'] * 1e3:>13.2f}")
    print("enqueue = all_gather + ring write of the global and local banks, timed after a barrier;"
          " peer wait = time at that barrier (load imbalance, not the bank's cost)")
    if len(rows) >= 2:
        base, last = rows[0][1], rows[-1][1]
        print(f"enqueue time {rows[-1][0]} vs {rows[0][0]} worker(s): "
              f"{last['enqueue_s'] / max(base['enqueue_s'], 1e-12):.1f}x")
    return 0
