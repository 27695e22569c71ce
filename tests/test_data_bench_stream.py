"""The stream benchmark's store builder, direct loops and table (the Ray part runs in the bench)."""

from __future__ import annotations

import numpy as np

from action_ray.bench.stream import _direct_rates, print_table, write_phantom_store
from action_ray.store import open_store


def test_phantom_store_and_direct_loops(tmp_path, capsys):
    url = write_phantom_store(str(tmp_path / "s.zarr"), cases=2, slices=4, size=32)
    store = open_store(url)
    cases = [c.case_id for c in store.list_cases(split="train")]
    assert len(cases) == 2
    image, label = store.read_volume(cases[0])
    assert image.shape == (4, 32, 32) and set(np.unique(label)) <= {0, 1, 2, 3} and label.max() > 0
    rates = _direct_rates(url, {}, cases, output_size=48)
    assert set(rates) == {"direct read_slice loop", "direct chunk-slab loop"}
    assert all(rate > 0 for rate in rates.values())
    print_table({"rates": {**rates, "ray data -> driver": rates["direct chunk-slab loop"] / 2},
                 "rows_per_epoch": 8, "read_tasks": 1}, step_rate=rates["direct chunk-slab loop"] / 4)
    out = capsys.readouterr().out
    assert "ray data -> driver" in out and "0.50x" in out and "2.00x" in out and "vs step" in out
