"""Data-parallel scaling: the step at 1, 2, 4 … workers and where its communication goes.

**Measured** (``action-ray bench scale``): each configuration runs the real P2 and FT steps
(`p2_step`, `ft_step`) inside a `TorchTrainer` (gloo on CPU, nccl with ``--gpu``) on synthetic
batches, so only the method is timed, not the data path. Every collective a step makes is timed
after a barrier, so time spent waiting for a slower rank is reported apart as *peer wait*:

* the gradient all-reduce (`all_reduce_gradients_`, one flat buffer per dtype);
* the bank all_gathers: the global and per-position local banks in P2, the class-wise pixel
  bank in FT (with ``ft.anco_negatives=bank``).

Printed per stage and worker count: step time, each collective's time and its share of the
step, and the weak-scaling efficiency step(1) / step(N) (the per-worker batch is fixed).

**Modelled** (``--model``): the bytes each collective moves per step for the paper's 2-D network
and their cost under an NCCL ring model at given link speeds, for 1 … 512 GPUs
(:mod:`action_ray.bench.scale_model`; docs/scaling.md explains the numbers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

from action_ray.bench.batches import synthetic_batch

STAGES = ("p2", "ft")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                        help="worker counts to compare (default: 1 2 4)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--config", default="cpu-demo", help="preset or YAML whose settings are used")
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--gpu", action="store_true", help="GPU workers (nccl)")
    parser.add_argument("--model", action="store_true",
                        help="print the modelled GPU table (paper network, NCCL ring) instead of measuring")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def timed(fn: Callable, name: str, clock: dict[str, float], sync: Callable[[], None]) -> Callable:
    """``fn`` timed after a barrier: its own time is added to ``clock[name]``, the time spent
    waiting at the barrier for slower ranks to ``clock["peer_wait"]``."""
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
        clock["peer_wait"] = clock.get("peer_wait", 0.0) + ready - start
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - ready
        return out

    return wrapper


def scale_worker(loop_config: dict) -> dict:
    """Per worker: ``steps`` timed steps of one stage; mean seconds per step of each part."""
    import torch

    import action_ray.train.steps.common as step_common
    from action_ray.config import config_from_dict
    from action_ray.train.loop import worker_device
    from action_ray.train.state import build_state
    from action_ray.train.steps import bind_step

    config = config_from_dict(loop_config["config"])
    stage = loop_config["stage"]
    device = worker_device(config)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    state = build_state(config, 4, device, stage)
    clock: dict[str, float] = {}
    for name, bank in state.banks().items():
        bank.enqueue = timed(bank.enqueue, f"{name}_bank", clock, sync)
    original = step_common.all_reduce_gradients_
    step_common.all_reduce_gradients_ = timed(original, "grad_allreduce", clock, sync)
    step = bind_step(config, stage)
    batch = synthetic_batch(config, stage)
    step_times: list[float] = []
    try:
        for index in range(loop_config["warmup"] + loop_config["steps"]):
            if index == loop_config["warmup"]:
                clock.clear()
            sync()
            start = time.perf_counter()
            step(state, batch)
            sync()
            if index >= loop_config["warmup"]:
                step_times.append(time.perf_counter() - start)
    finally:
        step_common.all_reduce_gradients_ = original
    out = {name: total / len(step_times) for name, total in clock.items()}
    out["step_s"] = statistics.mean(step_times)
    return out


def measure(config: Any, stage: str, workers: int, steps: int, warmup: int) -> dict:
    """One TorchTrainer fit with ``workers`` workers; rank 0's timings."""
    import tempfile

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = config.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    with tempfile.TemporaryDirectory(prefix="action-ray-bench-scale-") as storage:
        trainer = TorchTrainer(
            scale_worker,
            train_loop_config={"config": config.to_dict(), "stage": stage, "steps": steps, "warmup": warmup},
            torch_config=TorchConfig(backend=t.resolved_backend, timeout_s=300),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=t.use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name=f"bench-scale-{stage}-{workers}", storage_path=storage),
        )
        return trainer.fit().return_value


def format_table(stage: str, rows: list[tuple[int, dict]]) -> list[str]:
    """One stage's rows: step, each collective and its share, peer wait, efficiency."""
    parts = sorted({k for _, r in rows for k in r if k not in ("step_s", "peer_wait")})
    header = f"{'workers':>8} {'step ms':>9} " + " ".join(f"{p + ' ms':>20}" for p in parts)
    header += f" {'comm share':>11} {'peer wait ms':>13} {'efficiency':>11}"
    lines = [header]
    base = rows[0][1]["step_s"]
    for workers, r in rows:
        comm = sum(r.get(p, 0.0) for p in parts)
        cells = " ".join(f"{r.get(p, 0.0) * 1e3:>20.2f}" for p in parts)
        lines.append(f"{workers:>8} {r['step_s'] * 1e3:>9.1f} {cells} {comm / r['step_s']:>10.1%} "
                     f"{r.get('peer_wait', 0.0) * 1e3:>13.2f} {base / r['step_s']:>10.1%}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.model:
        from action_ray.bench.scale_model import print_model

        print_model()
        return 0
    for key, value in {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                       "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}.items():
        os.environ.setdefault(key, value)
    import ray

    from action_ray.config import load_config
    from action_ray.errors import ConfigError

    if args.steps < 1 or min(args.workers) < 1:
        raise ConfigError("--steps and every --workers value must be >= 1")
    overrides = [f"train.cpus_per_worker={args.cpus_per_worker}", f"train.use_gpu={str(args.gpu).lower()}"]
    results: dict[str, list[tuple[int, dict]]] = {stage: [] for stage in args.stages}
    started_ray = False
    if not ray.is_initialized():
        need = int(max(args.workers) * args.cpus_per_worker) + 2
        ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                 object_store_memory=256 * 2**20, log_to_driver=False, configure_logging=False)
        started_ray = True
    try:
        for stage in args.stages:
            for workers in args.workers:
                config = load_config(args.config, overrides + [f"train.num_workers={workers}", *args.overrides])
                results[stage].append((workers, measure(config, stage, workers, args.steps, args.warmup)))
                print(f"measured {stage} on {workers} worker(s)", flush=True)
    finally:
        if started_ray:
            ray.shutdown()
    device = "GPU (nccl)" if args.gpu else "CPU (gloo)"
    for stage in args.stages:
        print(f"\nbench scale: {stage} step ({args.config}), {args.steps} timed steps, {device}, "
              "per-worker batch fixed")
        print("\n".join(format_table(stage, results[stage])))
    print("each collective is timed after a barrier; peer wait = time at those barriers (load imbalance); "
          "efficiency = step(1 worker) / step(N)")
    return 0
