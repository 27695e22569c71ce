"""A model of data-parallel ACTION on 1 … 512 GPUs: bytes per step per collective, their cost
under an NCCL ring, and the efficiency that leaves (``action-ray bench scale --model``).

Sizes come from the paper's 2-D network (`acdc-2d`: the UNet, its heads and banks, the
per-worker batch of 3 + 3 slices in P2 and 4 + 4 in FT, 256²), counted on this machine; the
compute time of a step comes from its FLOPs (counted with ``torch.utils.flop_counter`` at 64²
and scaled by the pixel count, which is exact for convolutions) divided by an *assumed*
effective GPU throughput. What is assumed is printed with the table; a measured
``bench scale --gpu`` replaces it when a GPU is at hand.

Ring model (NCCL's ring algorithms, N GPUs, link bandwidth β bytes/s, per-hop latency α):

* all-reduce of S bytes: 2 (N − 1) / N · S / β + 2 (N − 1) α
* all-gather of s bytes from each rank: (N − 1) · s / β + (N − 1) α

The gradient all-reduce runs after the backward (one flat buffer, `all_reduce_gradients_`), so
it is not overlapped with compute; neither are the bank gathers. Efficiency is therefore
compute / (compute + all collectives) at a fixed per-worker batch (weak scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Effective training throughput assumed for one H100 on these small convolutions with AMP.
ASSUMED_TFLOPS = 100.0
#: Per-hop latency of a ring step between nodes (NCCL over InfiniBand / EFA), seconds.
ASSUMED_HOP_LATENCY_S = 10e-6
BANDWIDTHS_GBPS = (25.0, 100.0)
GPU_COUNTS = (1, 8, 32, 64, 512)


@dataclass(frozen=True)
class StageTraffic:
    """What one worker computes and sends in one step of a stage."""

    stage: str
    flops: float                 # per worker per step
    gradient_bytes: int          # the all-reduced gradient buffer (fp32)
    gather_bytes: dict[str, int]  # per worker, per bank all_gather


def ring_allreduce_s(size: float, n: int, bandwidth: float, alpha: float = ASSUMED_HOP_LATENCY_S) -> float:
    return 0.0 if n == 1 else 2 * (n - 1) / n * size / bandwidth + 2 * (n - 1) * alpha


def ring_allgather_s(per_rank: float, n: int, bandwidth: float, alpha: float = ASSUMED_HOP_LATENCY_S) -> float:
    return 0.0 if n == 1 else (n - 1) * per_rank / bandwidth + (n - 1) * alpha


def paper_traffic() -> list[StageTraffic]:
    """P2 and FT of `acdc-2d` (the published 2-D recipe), one worker's share of a step."""
    from torch.utils.flop_counter import FlopCounterMode

    from action_ray.config import load_config
    from action_ray.train.state import build_state, num_local_patches
    from action_ray.train.steps import bind_step
    from action_ray.bench.batches import synthetic_batch

    full = load_config("acdc-2d", ["data.store=unused", "train.num_workers=1", "ft.anco_negatives=bank"])
    side = full.data.train_side
    small = load_config("acdc-2d", ["data.store=unused", "train.num_workers=1", "ft.anco_negatives=bank",
                                    "data.slice_size=64", "model.cut_size=16", "model.cut_stride=8"])
    scale = (side / small.data.train_side) ** 2
    out = []
    for stage in ("p2", "ft"):
        state = build_state(small, 4, "cpu", stage)
        with FlopCounterMode(display=False) as counter:
            bind_step(small, stage)(state, synthetic_batch(small, stage))
        params = sum(p.numel() for group in state.optimizer.param_groups for p in group["params"])
        d = full.data
        if stage == "p2":
            gathers = {"global bank": d.pretrain_batch * state.model.global_dim * 4,
                       "local bank": d.pretrain_batch * num_local_patches(full) * state.model.local_dim * 4}
        else:  # the default draws negatives from the batch: no gather; the bank option adds one
            gathers = {}
        out.append(StageTraffic(stage, counter.get_total_flops() * scale, params * 4, gathers))
    ft = out[-1]
    pixel = {"pixel bank": 4 * full.ft.num_queries * full.model.representation_dim * 4}  # C·Q keys of D floats
    out.append(StageTraffic("ft, ft.anco_negatives=bank", ft.flops, ft.gradient_bytes, pixel))
    return out


def efficiency_rows(traffic: StageTraffic, bandwidth_gbps: float) -> list[tuple[int, float, float, float, float]]:
    """(GPUs, compute ms, all-reduce ms, gathers ms, efficiency) at one link speed."""
    beta = bandwidth_gbps * 1e9
    compute = traffic.flops / (ASSUMED_TFLOPS * 1e12)
    rows = []
    for n in GPU_COUNTS:
        reduce_s = ring_allreduce_s(traffic.gradient_bytes, n, beta)
        gather_s = sum(ring_allgather_s(b, n, beta) for b in traffic.gather_bytes.values())
        rows.append((n, compute * 1e3, reduce_s * 1e3, gather_s * 1e3, compute / (compute + reduce_s + gather_s)))
    return rows


def print_model() -> None:
    traffic = paper_traffic()
    print(f"bench scale --model: acdc-2d (paper 2-D network, 256², per-worker batch fixed); assumed "
          f"{ASSUMED_TFLOPS:g} TFLOP/s effective per GPU, {ASSUMED_HOP_LATENCY_S * 1e6:g} µs per ring hop")
    for t in traffic:
        gathers = ", ".join(f"{name} {size / 1e3:.1f} kB" for name, size in t.gather_bytes.items()) or "none"
        print(f"\n{t.stage}: {t.flops / 1e9:.0f} GFLOP per worker-step; gradient all-reduce "
              f"{t.gradient_bytes / 1e6:.1f} MB; all_gather per worker: {gathers}")
        for bandwidth in BANDWIDTHS_GBPS:
            print(f"  {bandwidth:g} GB/s: {'GPUs':>5} {'compute ms':>11} {'all-reduce ms':>14} "
                  f"{'gathers ms':>11} {'efficiency':>11}")
            for n, compute, reduce_ms, gather_ms, eff in efficiency_rows(t, bandwidth):
                print(f"  {'':>9} {n:>5} {compute:>11.2f} {reduce_ms:>14.2f} {gather_ms:>11.2f} {eff:>10.1%}")
