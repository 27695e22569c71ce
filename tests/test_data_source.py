"""VolumeSliceDatasource read tasks, called directly (no Ray cluster), on real stores."""

from __future__ import annotations

import numpy as np
import pytest
from ray.data.block import BlockAccessor

from action_ray.data.resize import resize_slices
from action_ray.data.patches import axis_origins
from action_ray.data.labels import NO_LABEL_UINT8
from action_ray.data.source import VolumeSliceDatasource, z_chunk_of
from action_ray.io.normalise import NormalisationSpec, normalise_array
from action_ray.store import CaseMeta, create_store

SHAPES = {"c0": (5, 24, 20), "c1": (6, 24, 20), "c2": (7, 24, 20), "c3": (4, 24, 20)}
UNLABELLED = {"c3"}


def make_store(url: str, storage_options=None, shapes=SHAPES, chunking="slice", seed=0):
    """A store of random MR-like cases; returns (store, {case: (image, label|None)})."""
    store = create_store(url, name="test", modality="MR", layout="folder",
                         classes={0: "background", 1: "a", 2: "b", 3: "c"}, storage_options=storage_options)
    rng = np.random.default_rng(seed)
    volumes = {}
    for i, (case_id, shape) in enumerate(shapes.items()):
        image = rng.gamma(2.0, 150.0, size=shape).astype(np.float32)
        label = None if case_id in UNLABELLED else rng.integers(0, 4, size=shape).astype(np.uint8)
        meta = CaseMeta(case_id, f"patient{i}", "train", (6.0, 1.5, 1.5), np.eye(4).tolist(), {"image": "x"})
        store.write_case(meta, image, label, chunking=chunking)
        volumes[case_id] = (image, label)
    return store, volumes


@pytest.fixture(scope="module")
def store_and_volumes(tmp_path_factory):
    return make_store(str(tmp_path_factory.mktemp("data_source") / "store.zarr"))


def run_tasks(source) -> dict[str, np.ndarray]:
    """Call every read task in-process and concatenate the rows."""
    batches = []
    for task in source.get_read_tasks(parallelism=200):
        for block in task():
            batches.append(BlockAccessor.for_block(block).to_batch_format("numpy"))
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def expected_image(store, volumes, case_id, spec=NormalisationSpec("percentile")):
    return normalise_array(volumes[case_id][0], spec, store.case(case_id).stats, case_id)


def test_read_tasks_return_exactly_the_stored_slices_normalised(store_and_volumes):
    store, volumes = store_and_volumes
    source = VolumeSliceDatasource(store.url, None, list(SHAPES), with_label=True,
                                   rows_per_task=4, output_size=None)
    rows = run_tasks(source)
    assert rows["image"].dtype == np.float32 and rows["image"].shape[1:] == (1, 24, 20)
    assert rows["label"].dtype == np.uint8 and rows["case"].dtype == np.int32
    assert len(rows["z"]) == source.num_rows() == sum(s[0] for s in SHAPES.values())
    assert source.case_table == tuple(SHAPES)
    seen = set()
    for image, label, case, z in zip(rows["image"], rows["label"], rows["case"], rows["z"]):
        case_id = source.case_table[case]
        seen.add((case_id, int(z)))
        np.testing.assert_array_equal(image[0], expected_image(store, volumes, case_id)[z])
        stored_label = volumes[case_id][1]
        if stored_label is None:
            assert np.all(label == NO_LABEL_UINT8)
        else:
            np.testing.assert_array_equal(label, stored_label[z])
    assert seen == {(c, z) for c, s in SHAPES.items() for z in range(s[0])}
    assert 0.0 <= rows["image"].min() and rows["image"].max() <= 1.0


def test_rows_are_resized_to_the_training_size(store_and_volumes):
    store, volumes = store_and_volumes
    source = VolumeSliceDatasource(store.url, None, ["c1"], output_size=(48, 40))
    rows = run_tasks(source)
    image, label = resize_slices(expected_image(store, volumes, "c1"), volumes["c1"][1], (48, 40))
    np.testing.assert_allclose(rows["image"][:, 0], image, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(rows["label"], label)
    np.testing.assert_array_equal(rows["label"][:, ::2, ::2], volumes["c1"][1])  # nearest, factor 2
    assert source.estimate_inmemory_data_size() == 6 * (48 * 40 * 5 + 8)


def test_unlabelled_stream_has_no_label_column(store_and_volumes):
    store, volumes = store_and_volumes
    source = VolumeSliceDatasource(store.url, None, ["c3", "c0"], with_label=False, output_size=None)
    rows = run_tasks(source)
    assert set(rows) == {"image", "case", "z"}
    assert len(rows["z"]) == 4 + 5


def test_repeated_cases_are_read_again_and_indexed_once(store_and_volumes):
    store, _ = store_and_volumes
    source = VolumeSliceDatasource(store.url, None, ["c0", "c2", "c0"], output_size=None)
    rows = run_tasks(source)
    assert source.case_table == ("c0", "c2")
    pairs = list(zip(rows["case"].tolist(), rows["z"].tolist()))
    assert len(pairs) == 5 + 7 + 5 and sorted(set(pairs)) == sorted({(0, z) for z in range(5)} | {(1, z) for z in range(7)})
    assert pairs.count((0, 3)) == 2


def test_patch_mode_returns_the_right_patches(store_and_volumes):
    store, volumes = store_and_volumes
    patch, stride = (4, 16, 16), (2, 8, 8)
    source = VolumeSliceDatasource(store.url, None, ["c1", "c3"], mode="patch", patch_size=patch,
                                   patch_stride=stride, with_label=True, rows_per_task=7)
    rows = run_tasks(source)
    assert rows["image"].shape[1:] == (1, *patch) and rows["label"].shape[1:] == patch
    zs, ys, xs = (axis_origins(n, p, s) for n, p, s in zip(SHAPES["c1"], patch, stride))
    assert (zs, ys, xs) == ([0, 2], [0, 8], [0, 4])  # last origin flush with the edge
    expected_count = len(zs) * len(ys) * len(xs) + 1 * len(ys) * len(xs)  # c3 has Z=4 -> one z origin
    assert len(rows["case"]) == expected_count == source.num_rows()
    for image, label, case, z, y, x in zip(rows["image"], rows["label"], rows["case"], rows["z"], rows["y"], rows["x"]):
        case_id = source.case_table[case]
        box = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        np.testing.assert_array_equal(image[0], expected_image(store, volumes, case_id)[box])
        if case_id == "c3":
            assert np.all(label == NO_LABEL_UINT8)
        else:
            np.testing.assert_array_equal(label, volumes[case_id][1][box])


def test_patches_of_small_volumes_are_zero_padded(store_and_volumes):
    store, volumes = store_and_volumes
    source = VolumeSliceDatasource(store.url, None, ["c0"], mode="patch", patch_size=(8, 32, 16))
    rows = run_tasks(source)
    assert rows["image"].shape == (2, 1, 8, 32, 16)  # x: origins 0 and 4
    expected = expected_image(store, volumes, "c0")
    np.testing.assert_array_equal(rows["image"][0, 0, :5, :24, :], expected[:, :, 0:16])
    assert np.all(rows["image"][:, :, 5:] == 0) and np.all(rows["label"][:, 5:] == 0)


def test_tasks_are_sized_by_bytes_and_aligned_to_chunks(tmp_path):
    shapes = {"big": (40, 64, 64), "s1": (3, 64, 64), "s2": (3, 64, 64)}
    store, _ = make_store(str(tmp_path / "patchy.zarr"), shapes=shapes, chunking="patch")
    row_bytes = 64 * 64 * 5 + 8
    source = VolumeSliceDatasource(store.url, None, list(shapes), output_size=None,
                                   target_task_bytes=20 * row_bytes, min_tasks=1)
    plan = source.plan_tasks()
    big = [(u.start, u.stop) for task in plan for u in task if source.case_table[u.case] == "big"]
    chunk = z_chunk_of(store, "big")
    assert chunk > 1, "patch chunking should give a z chunk larger than one slice"
    assert big[0][0] == 0 and big[-1][1] == 40 and all(a[1] == b[0] for a, b in zip(big, big[1:]))
    assert all(start % chunk == 0 for start, _ in big)
    # the two small cases stay whole and share one task
    small_tasks = [task for task in plan if any(source.case_table[u.case] != "big" for u in task)]
    assert len(small_tasks) == 1 and [(u.start, u.stop) for u in small_tasks[0] if u.case > 0] == [(0, 3), (0, 3)]
    tasks = source.get_read_tasks(parallelism=1)
    assert sum(t.metadata.num_rows for t in tasks) == 46
    assert all(t.metadata.size_bytes <= 20 * row_bytes for t in tasks)


def test_slabs_of_a_case_larger_than_a_task_are_whole_shards(tmp_path, monkeypatch):
    """Slice chunking: a large case is sharded every 8 slices here; its slabs start on shard
    boundaries, so each read of a slab reads whole shards (one GET each on S3)."""
    from action_ray.store import codecs

    monkeypatch.setattr(codecs, "SHARD_BYTES", 8 * 64 * 64 * codecs.SHARD_ITEMSIZE)
    shapes = {"big": (40, 64, 64), "s1": (3, 64, 64)}
    store, volumes = make_store(str(tmp_path / "sharded.zarr"), shapes=shapes)
    assert z_chunk_of(store, "big") == 8
    row_bytes = 64 * 64 * 5 + 8
    source = VolumeSliceDatasource(store.url, None, list(shapes), output_size=None,
                                   target_task_bytes=20 * row_bytes, min_tasks=1)
    big = [(u.start, u.stop) for task in source.plan_tasks() for u in task if source.case_table[u.case] == "big"]
    assert big == [(0, 16), (16, 32), (32, 40)]
    rows = run_tasks(source)
    assert sorted(zip(rows["case"].tolist(), rows["z"].tolist())) == sorted(
        (source.case_table.index(c), z) for c, shape in shapes.items() for z in range(shape[0]))


def test_a_small_epoch_is_still_cut_into_many_read_tasks(store_and_volumes):
    """Block shuffling needs blocks: 22 rows of 20 KB must not become one 16 MiB task."""
    store, volumes = store_and_volumes
    source = VolumeSliceDatasource(store.url, None, list(volumes), output_size=(32, 32), min_tasks=8)
    plan = source.plan_tasks()
    assert len(plan) >= 8
    rows = sorted((source.case_table[u.case], z) for task in plan for u in task for z in range(u.start, u.stop))
    assert rows == sorted((c, z) for c, (image, _) in volumes.items() for z in range(image.shape[0]))


def test_reads_from_s3(s3_server):
    bucket = s3_server.new_bucket("data")
    url = f"s3://{bucket}/store.zarr"
    store, volumes = make_store(url, s3_server.storage_options, shapes={"c0": (3, 16, 16)})
    source = VolumeSliceDatasource(url, s3_server.storage_options, ["c0"], output_size=None)
    rows = run_tasks(source)
    np.testing.assert_array_equal(rows["image"][:, 0], expected_image(store, volumes, "c0"))
    np.testing.assert_array_equal(rows["label"], volumes["c0"][1])


def test_patch_tasks_split_inside_a_plane_and_read_only_their_box(store_and_volumes):
    store, volumes = store_and_volumes
    patch = (2, 8, 8)
    row_bytes = 2 * 8 * 8 * 5 + 4 * 4
    whole = VolumeSliceDatasource(store.url, None, ["c1"], mode="patch", patch_size=patch, min_tasks=1)
    split = VolumeSliceDatasource(store.url, None, ["c1"], mode="patch", patch_size=patch,
                                  target_task_bytes=5 * row_bytes, min_tasks=1)
    assert whole.num_rows() == split.num_rows() == 3 * 3 * 3
    assert len(whole.plan_tasks()) == 1
    assert all(t.metadata.num_rows <= 5 for t in split.get_read_tasks(parallelism=1))
    a, b = run_tasks(whole), run_tasks(split)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_corrupt_chunk_skips_only_its_rows_and_names_the_case(tmp_path, caplog):
    """A chunk damaged after ingest: the read task leaves out that slab with a warning naming the
    case, and every other row is still read (training goes on; an empty epoch still stops it)."""
    import logging

    from tests.damage import corrupt_slice

    store, volumes = make_store(str(tmp_path / "store.zarr"))
    corrupt_slice(tmp_path / "store.zarr", "c1", 2)
    source = VolumeSliceDatasource(store.url, None, list(SHAPES), with_label=True, rows_per_task=1,
                                   output_size=None)
    with caplog.at_level(logging.WARNING, logger="action_ray.data.source"):
        rows = run_tasks(source)
    seen = {(source.case_table[c], int(z)) for c, z in zip(rows["case"], rows["z"])}
    expected = {(c, z) for c, s in SHAPES.items() for z in range(s[0])}
    assert seen == expected - {("c1", 2)}
    assert any("case c1" in r.getMessage() and "rows 2..2" in r.getMessage() for r in caplog.records)
