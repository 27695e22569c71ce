"""The few `torch.distributed` calls the method needs, usable with or without a process group.

The memory banks are *global*: every rank gathers the teacher keys of all ranks and enqueues the
same global batch, so all replicas hold identical banks. These helpers keep that one collective
in one place and make every function a no-op when no process group is initialised (a plain
single-process run, a unit test, or a Ray worker before `prepare_model`).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a `torch.distributed` process group is initialised (and there may be peers)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks in the default group; 1 outside a process group."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group; 0 outside a process group."""
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def concat_all_gather(x: torch.Tensor, check_sizes: bool = False) -> torch.Tensor:
    """Gather ``x`` from every rank and concatenate along dim 0 in rank order.

    x: (N, ...) on this rank -> (world_size * N, ...), identical on every rank. Without a process
    group (or with one rank) ``x`` is returned as is. No gradient flows through the gather: it is
    meant for teacher keys, which are constants.

    All ranks must pass the same N: `all_gather` moves equally sized buffers and, with gloo, a
    size mismatch aborts the job instead of raising. ``check_sizes=True`` first gathers every
    rank's N (one extra small collective and a host sync) and raises a `ValueError` listing the
    sizes; use it while debugging a data pipeline, leave it off in the hot loop.
    """
    if world_size() == 1:
        return x
    n = world_size()
    if check_sizes:
        sizes = _gather_leading_sizes(x)
        if len(set(sizes)) != 1:
            raise ValueError(
                f"concat_all_gather needs the same batch size on every rank, got {sizes} "
                "(rank order); make every worker enqueue equally sized batches "
                "(e.g. drop_last=True in the data loader)"
            )
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def _gather_leading_sizes(x: torch.Tensor) -> list[int]:
    """Each rank's ``x.shape[0]``, in rank order (debug path: syncs with the host)."""
    mine = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [int(p) for p in torch.cat(parts).tolist()]


@torch.no_grad()
def all_reduce_gradients_(parameters: Iterable[torch.Tensor]) -> None:
    """Average ``.grad`` over all ranks in place: the gradient sync of DDP, without DDP.

    `ActionModel` is a container of several networks whose trainable set changes per stage,
    which DDP (one wrapped forward, parameters fixed at wrap time) does not fit. Call this
    between ``backward()`` and ``optimizer.step()``. Gradients are flattened per (device, dtype)
    so each group costs one all_reduce. Parameters whose grad is None are skipped, so every
    rank must have gradients for the same parameters (true when they run the same stage step).
    No-op without a process group.
    """
    n = world_size()
    if n == 1:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(n)
        chunks = flat.split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [c.reshape(g.shape) for c, g in zip(chunks, grads)])


@torch.no_grad()
def shuffle_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's "shuffle BN": give this rank a random slice of the *global* batch.

    x: (B, ...) on each rank -> (x_shuffled (B, ...), unshuffle_index (world_size * B,)).
    The teacher then computes BN batch statistics over samples from other ranks, so student and
    teacher statistics cannot share a batch-level shortcut. The permutation is drawn on rank 0
    (``generator`` may live on the CPU or on x's device) and broadcast, so ranks agree. With one
    process it permutes the local batch (which, as in the published code, changes only the
    dropout draws). Undo with `unshuffle_batch`. Same-B rule as `concat_all_gather`.
    """
    gathered = concat_all_gather(x)
    total, batch = gathered.shape[0], x.shape[0]
    perm_device = generator.device if generator is not None else x.device
    perm = torch.randperm(total, generator=generator, device=perm_device).to(x.device)
    if world_size() > 1:
        dist.broadcast(perm, src=0)
    mine = perm[rank() * batch : (rank() + 1) * batch]
    return gathered[mine], torch.argsort(perm)


@torch.no_grad()
def unshuffle_batch(y: torch.Tensor, unshuffle_index: torch.Tensor) -> torch.Tensor:
    """Inverse of `shuffle_batch`: y (B, ...) computed on the shuffled slice -> rows of the
    original local batch, in their original order."""
    gathered = concat_all_gather(y)
    batch = y.shape[0]
    return gathered[unshuffle_index[rank() * batch : (rank() + 1) * batch]]
