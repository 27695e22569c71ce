"""Global memory banks: ring buffers of teacher keys shared by every worker of a job.

The published bank is a per-process FIFO of K = 36 teacher embeddings. action-ray keeps one
*logical* bank for the whole job (method.md §3.4): at every enqueue each rank all-gathers
the keys of all ranks and writes the same global batch, in rank order, so all replicas hold
byte-identical banks. The trade-off (as in lightly's memory bank): a gathered bank is fresher and
its meaning does not depend on the number of workers (K = ``bank_batches`` x global batch, the
published "six most recent batches" at any scale), at the cost of one all_gather per step;
``gather_distributed=False`` gives per-worker banks instead.

Both banks are `nn.Module`s whose contents are *persistent* buffers, so ``.to(device)`` moves
them and ``state_dict()`` carries them into the checkpoint. Enqueueing never syncs with the
host: the write pointer is a device tensor and the write indices are computed on the device.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from action_ray.distributed import concat_all_gather


def _as_shape(dim: int | Sequence[int]) -> tuple[int, ...]:
    shape = (int(dim),) if isinstance(dim, int) else tuple(int(d) for d in dim)
    if not shape or min(shape) < 1:
        raise ValueError(f"bank key shape must be positive integers, got {dim!r}")
    return shape


def _seeded_unit_keys(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """N(0, 1) keys, L2-normalised along the last axis; identical on every rank for one seed."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(shape, generator=generator), dim=-1)


class MemoryBank(nn.Module):
    """Ring buffer of ``size`` raw (unnormalised) teacher keys of shape ``dim``.

    ``dim`` is an int for the global bank (keys (K, D)) or a tuple for the per-position local
    bank (``dim=(P, D)``, keys (K, P, D)). Buffers: ``keys`` and ``ptr`` (next row to write).

    The steps read a snapshot, ``keys.clone()`` (``train.steps.pretrain``), and the losses
    normalise it; they write with `enqueue` after the losses are computed, so the bank never holds
    the current samples.
    """

    keys: torch.Tensor
    ptr: torch.Tensor

    def __init__(
        self,
        size: int,
        dim: int | Sequence[int],
        gather_distributed: bool = True,
        seed: int = 0,
        check_sizes: bool = False,
    ) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"memory bank size must be >= 1, got {size}")
        self.size = int(size)
        self.key_shape = _as_shape(dim)
        self.gather_distributed = gather_distributed
        self.check_sizes = check_sizes
        self.register_buffer("keys", _seeded_unit_keys((self.size, *self.key_shape), seed), persistent=True)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=True)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write this step's keys (N, *dim) (all ranks' keys when distributed) at ``ptr``.

        The global batch is the concatenation of every rank's N keys in rank order; all ranks
        must pass the same N (set ``check_sizes=True`` to get a clear error instead of a hang or
        abort). Writes wrap around the ring; if the global batch is larger than the bank, only
        its last ``size`` rows remain, exactly as if the rows were written one by one. ``ptr``
        advances by the global batch size modulo ``size``.
        """
        if tuple(keys.shape[1:]) != self.key_shape:
            raise ValueError(
                f"memory bank expects keys of shape (N, {', '.join(map(str, self.key_shape))}), got {tuple(keys.shape)}"
            )
        keys = keys.detach()
        if self.gather_distributed:
            keys = concat_all_gather(keys, check_sizes=self.check_sizes)
        n = keys.shape[0]
        if n == 0:
            return
        kept = min(n, self.size)
        offsets = torch.arange(n - kept, n, device=self.keys.device)
        rows = (self.ptr + offsets) % self.size
        self.keys.index_copy_(0, rows, keys[n - kept :].to(self.keys.dtype))
        self.ptr.copy_((self.ptr + n) % self.size)


class ClassPixelBank(nn.Module):
    """Per-class ring buffers of pixel keys, for anatomical-contrast negatives from the whole job.

    Buffers: ``keys`` (num_classes, per_class, dim), ``ptr`` (num_classes,) next slot per class,
    ``filled`` (num_classes,) how many slots of each class hold real keys (they fill from slot 0;
    the rest is seeded noise). Use `valid_mask()` to sample only real keys.
    """

    keys: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        per_class: int,
        dim: int,
        gather_distributed: bool = True,
        seed: int = 0,
        check_sizes: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1 or per_class < 1 or dim < 1:
            raise ValueError(
                f"ClassPixelBank sizes must be >= 1, got num_classes={num_classes}, per_class={per_class}, dim={dim}"
            )
        self.num_classes, self.per_class, self.dim = int(num_classes), int(per_class), int(dim)
        self.gather_distributed = gather_distributed
        self.check_sizes = check_sizes
        self.register_buffer("keys", _seeded_unit_keys((num_classes, per_class, dim), seed), persistent=True)
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long), persistent=True)
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long), persistent=True)

    def valid_mask(self) -> torch.Tensor:
        """(num_classes, per_class) bool: True where a slot holds an enqueued key."""
        slots = torch.arange(self.per_class, device=self.filled.device)
        return slots.unsqueeze(0) < self.filled.unsqueeze(1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Append pixel keys (N, dim) to the ring of their class (labels (N,), in [0, C)).

        Gathered across ranks like `MemoryBank.enqueue` (same-N rule). Within a class, rows are
        written in their global order with wrap-around; when a class gets more rows than
        ``per_class``, the last ``per_class`` remain. Vectorised: one stable sort by class, no
        loop over classes or rows, no host sync.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim or labels.shape != keys.shape[:1]:
            raise ValueError(
                f"ClassPixelBank expects keys (N, {self.dim}) and labels (N,), got "
                f"{tuple(keys.shape)} and {tuple(labels.shape)}"
            )
        keys, labels = keys.detach(), labels.detach().long()
        if self.gather_distributed:
            keys = concat_all_gather(keys, check_sizes=self.check_sizes)
            labels = concat_all_gather(labels)
        n = keys.shape[0]
        if n == 0:
            return
        device = self.keys.device
        # rows grouped by class, original order kept inside each class
        order = torch.sort(labels, stable=True).indices
        sorted_labels = labels[order]
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        counts.scatter_add_(0, labels, torch.ones_like(labels))
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(n, device=device) - starts[sorted_labels]  # rank of the row within its class
        count_of_row = counts[sorted_labels]
        # A slot hit by several rows of one class must end with the *last* of them. Every row
        # writes the value of that last row (same slot => same value), so duplicate indices in
        # index_copy_ are harmless and no row needs to be dropped with a boolean mask.
        last_pos = pos + ((count_of_row - 1 - pos) // self.per_class) * self.per_class
        source = order[starts[sorted_labels] + last_pos]
        slot = sorted_labels * self.per_class + (self.ptr[sorted_labels] + pos) % self.per_class
        flat = self.keys.view(self.num_classes * self.per_class, self.dim)
        flat.index_copy_(0, slot, keys[source].to(self.keys.dtype))
        self.ptr.copy_((self.ptr + counts) % self.per_class)
        self.filled.copy_(torch.clamp(self.filled + counts, max=self.per_class))
