"""Memory banks: ring order and wrap-around, checkpointing, and the global (all-gathered) bank."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from action_ray.bank import ClassPixelBank, MemoryBank
from action_ray.distributed import (
    all_reduce_gradients_,
    concat_all_gather,
    is_distributed,
    shuffle_batch,
    unshuffle_batch,
    world_size,
)


def _reference_ring(size: int, initial: list, batches: list[list]) -> tuple[list, int]:
    """Write rows one at a time into a Python list ring; returns (rows, ptr)."""
    rows, ptr = list(initial), 0
    for batch in batches:
        for row in batch:
            rows[ptr] = row
            ptr = (ptr + 1) % size
    return rows, ptr


def test_initial_keys_are_seeded_and_normalised():
    a, b, c = MemoryBank(8, 5, seed=3), MemoryBank(8, 5, seed=3), MemoryBank(8, 5, seed=4)
    assert torch.equal(a.keys, b.keys) and not torch.equal(a.keys, c.keys)
    torch.testing.assert_close(a.keys.norm(dim=-1), torch.ones(8))
    assert a.ptr.item() == 0 and a.ptr.dtype == torch.long


@pytest.mark.parametrize("size, batch_sizes", [(6, [2, 2, 2, 2]), (5, [2, 3, 4, 1, 2]), (4, [3, 9, 1]), (3, [0, 7])])
def test_enqueue_order_and_wrap_around_match_list_reference(size, batch_sizes):
    bank = MemoryBank(size, 2, gather_distributed=False)
    counter = iter(range(1000))
    batches = [[[float(next(counter))] * 2 for _ in range(n)] for n in batch_sizes]
    for batch in batches:
        bank.enqueue(torch.tensor(batch).reshape(len(batch), 2))
    want, ptr = _reference_ring(size, [None] * size, batches)
    for i, row in enumerate(want):
        if row is not None:
            assert bank.keys[i].tolist() == row, (i, bank.keys)
    assert bank.ptr.item() == ptr


def test_local_bank_per_position_shape_and_checks():
    bank = MemoryBank(4, (36, 16), gather_distributed=False)
    keys = torch.randn(3, 36, 16)
    bank.enqueue(keys)
    assert torch.equal(bank.keys[:3], keys)
    assert bank.keys.shape == (4, 36, 16)
    with pytest.raises(ValueError, match=r"keys of shape \(N, 36, 16\)"):
        bank.enqueue(torch.randn(3, 16))
    with pytest.raises(ValueError, match="size must be"):
        MemoryBank(0, 4)


def test_bank_state_dict_round_trip():
    a = MemoryBank(5, 3, gather_distributed=False)
    a.enqueue(torch.randn(7, 3))
    state = a.state_dict()
    assert set(state) == {"keys", "ptr"}
    b = MemoryBank(5, 3, seed=99, gather_distributed=False)
    b.load_state_dict(state)
    assert torch.equal(a.keys, b.keys) and b.ptr.item() == 2
    new = torch.randn(2, 3)
    a.enqueue(new), b.enqueue(new)
    assert torch.equal(a.keys, b.keys) and torch.equal(a.ptr, b.ptr)

    pa = ClassPixelBank(3, 4, 2, gather_distributed=False)
    pa.enqueue(torch.randn(5, 2), torch.tensor([0, 2, 2, 1, 0]))
    pb = ClassPixelBank(3, 4, 2, seed=7, gather_distributed=False)
    pb.load_state_dict(pa.state_dict())
    assert set(pa.state_dict()) == {"keys", "ptr", "filled"}
    assert all(torch.equal(pa.state_dict()[k], pb.state_dict()[k]) for k in pa.state_dict())


def _reference_class_bank(bank: ClassPixelBank, batches):
    rings = [[None] * bank.per_class for _ in range(bank.num_classes)]
    ptr = [0] * bank.num_classes
    filled = [0] * bank.num_classes
    for keys, labels in batches:
        for key, label in zip(keys.tolist(), labels.tolist()):
            rings[label][ptr[label]] = key
            ptr[label] = (ptr[label] + 1) % bank.per_class
            filled[label] = min(filled[label] + 1, bank.per_class)
    return rings, ptr, filled


def test_class_pixel_bank_matches_per_class_list_reference():
    generator = torch.Generator().manual_seed(1)
    bank = ClassPixelBank(num_classes=4, per_class=5, dim=3, gather_distributed=False)
    batches = []
    for n in (3, 11, 0, 17, 2):
        labels = torch.randint(0, 4, (n,), generator=generator)
        labels[labels == 3] = 1  # class 3 never appears: stays unfilled
        keys = torch.randn(n, 3, generator=generator)
        batches.append((keys, labels))
        bank.enqueue(keys, labels)
    rings, ptr, filled = _reference_class_bank(bank, batches)
    assert bank.ptr.tolist() == ptr and bank.filled.tolist() == filled
    mask = bank.valid_mask()
    for c in range(4):
        for s in range(5):
            assert mask[c, s].item() == (rings[c][s] is not None)
            if rings[c][s] is not None:
                assert bank.keys[c, s].tolist() == pytest.approx(rings[c][s])
    assert filled[3] == 0
    with pytest.raises(ValueError, match=r"keys \(N, 3\) and labels \(N,\)"):
        bank.enqueue(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


def test_helpers_without_process_group():
    assert not is_distributed() and world_size() == 1
    x = torch.randn(3, 2)
    assert concat_all_gather(x) is x
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    all_reduce_gradients_([p])
    assert torch.equal(p.grad, torch.ones(2))


def test_shuffle_batch_single_process_round_trip():
    x = torch.arange(12.0).reshape(6, 2)
    shuffled, undo = shuffle_batch(x, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(unshuffle_batch(shuffled * 3, undo), x * 3)


def test_enqueue_has_no_data_dependent_host_sync():
    # the meta device has no data: .item(), nonzero() or boolean masks fail there, so an enqueue
    # that runs on meta computes its write positions without reading values back to the host
    bank = MemoryBank(8, 4, gather_distributed=False).to("meta")
    bank.enqueue(torch.empty(11, 4, device="meta"))
    pixels = ClassPixelBank(3, 5, 4, gather_distributed=False).to("meta")
    pixels.enqueue(torch.empty(10, 4, device="meta"), torch.empty(10, dtype=torch.long, device="meta"))
    assert pixels.valid_mask().shape == (3, 5)
    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.empty(3, device="meta").nonzero()


# ---------------------------------------------------------------- two gloo processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS, PER_RANK, SIZE, DIM = 5, 3, 8, 4  # 5 steps x global batch 6 into 8 rows: wraps, no divisibility


def _global_stream():
    """The global batches of every step, and pixel keys/labels, fixed by a seed."""
    g = torch.Generator().manual_seed(123)
    keys = torch.randn(STEPS, 2 * PER_RANK, DIM, generator=g)
    local = torch.randn(STEPS, 2 * PER_RANK, 3, DIM, generator=g)
    pixels = torch.randn(STEPS, 2 * 10, DIM, generator=g)
    labels = torch.randint(0, 3, (STEPS, 2 * 10), generator=g)
    return keys, local, pixels, labels


def _make_banks():
    return (
        MemoryBank(SIZE, DIM, seed=5),
        MemoryBank(SIZE, (3, DIM), seed=6),
        ClassPixelBank(3, 7, DIM, seed=7),
    )


def _bank_states(banks) -> dict:
    return {f"{i}.{k}": v.clone() for i, b in enumerate(banks) for k, v in b.state_dict().items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        banks = _make_banks()
        keys, local, pixels, labels = _global_stream()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        mine_px = slice(rank * 10, (rank + 1) * 10)
        for step in range(STEPS):
            banks[0].enqueue(keys[step, mine])
            banks[1].enqueue(local[step, mine])
            banks[2].enqueue(pixels[step, mine_px], labels[step, mine_px])
        torch.save(_bank_states(banks), f"{out_dir}/rank{rank}.pt")
        checked = MemoryBank(SIZE, DIM, check_sizes=True)
        try:
            checked.enqueue(torch.randn(2 + rank, DIM))
            error = ""
        except ValueError as e:
            error = str(e)
        torch.save(error, f"{out_dir}/error{rank}.pt")
        # gradient averaging: rank r's grads are (r + 1) * base -> mean 1.5 * base on both ranks
        params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(4))]
        for i, p in enumerate(params):
            p.grad = (rank + 1) * torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) + i
        all_reduce_gradients_(params)
        torch.save([p.grad for p in params], f"{out_dir}/grads{rank}.pt")
        # shuffle BN: each rank gets a slice of the global batch; the unshuffle restores its rows
        x = keys[0, mine]
        shuffled, undo = shuffle_batch(x, torch.Generator().manual_seed(rank))  # rank 0's draw wins
        torch.save((shuffled, unshuffle_batch(2 * shuffled, undo), x), f"{out_dir}/shuffle{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_hold_the_single_process_global_bank(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")

    single = _make_banks()
    for b in single:
        b.gather_distributed = False
    keys, local, pixels, labels = _global_stream()
    for step in range(STEPS):
        single[0].enqueue(keys[step])
        single[1].enqueue(local[step])
        single[2].enqueue(pixels[step], labels[step])
    reference = _bank_states(single)

    assert rank0.keys() == rank1.keys() == reference.keys()
    for name in reference:
        # byte-identical across ranks, and equal to one process fed 2B in rank order
        assert rank0[name].numpy().tobytes() == rank1[name].numpy().tobytes(), name
        assert torch.equal(rank0[name], reference[name]), name
    assert reference["0.ptr"].item() == (STEPS * 2 * PER_RANK) % SIZE
    for rank in (0, 1):
        assert "same batch size on every rank, got [2, 3]" in torch.load(tmp_path / f"error{rank}.pt")
        shuffled, restored, original = torch.load(tmp_path / f"shuffle{rank}.pt")
        torch.testing.assert_close(restored, 2 * original, rtol=0, atol=0)
    slices = [torch.load(tmp_path / f"shuffle{r}.pt")[0] for r in (0, 1)]
    both = torch.cat(slices)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, keys[0].tolist()))
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for i, (g, shape) in enumerate(zip(grads, [(3, 2), (4,)])):
            want = 1.5 * torch.arange(g.numel(), dtype=torch.float32).reshape(shape) + i
            torch.testing.assert_close(g, want)
