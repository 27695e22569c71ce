"""Ray Data pipelines over a real store: epochs, shuffling, oversampling, shards, bounded memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from action_ray.data.splits import LabelSplit, label_split
from action_ray.data.source import VolumeSliceDatasource
from action_ray.data.streams import StreamSettings, build_streams, dataset_from_source
from action_ray.errors import ConfigError
from test_data_source import SHAPES, make_store  # tests/ is on sys.path (pytest rootdir conftest)

OBJECT_STORE_BYTES = 256 * 2**20


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # conftest.py has already exported the RAY_* variables, before this init as required.
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # two concurrent read tasks: on a 2-core runner more only adds worker start-ups (each
    # imports numpy/zarr/torch once) without adding throughput
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(cpu=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store, _ = make_store(str(tmp_path_factory.mktemp("data_streams") / "store.zarr"))
    return store


def epoch_rows(dataset) -> list[tuple[int, int]]:
    rows = []
    for batch in dataset.iter_batches(batch_size=5, batch_format="numpy"):
        rows += list(zip(batch["case"].tolist(), batch["z"].tolist()))
    return rows


def test_every_slice_once_per_epoch_in_a_new_order(ray_cluster, store):
    source = VolumeSliceDatasource(store.url, None, list(SHAPES), rows_per_task=2, output_size=(32, 32))
    dataset = dataset_from_source(source, shuffle="blocks")
    expected = sorted((i, z) for i, shape in enumerate(SHAPES.values()) for z in range(shape[0]))
    orders = []
    for _ in range(3):
        rows = epoch_rows(dataset)
        assert sorted(rows) == expected  # every slice exactly once
        orders.append(rows)
    assert len({tuple(o) for o in orders}) > 1, "block order should change between epochs"
    seeded = dataset_from_source(source, shuffle="blocks", seed=7)
    first, second = epoch_rows(seeded), epoch_rows(seeded)
    assert first == second and sorted(first) == expected  # documented: a seed fixes the order


def test_build_streams_oversamples_labelled_and_shards_equally(ray_cluster, store):
    split = label_split(store, num_labelled_patients=1, seed=4)
    assert len(split.labelled_cases) == 1 and split.labelled_cases[0] != "c3"  # c3 has no label
    streams = build_streams(store.url, None, split, rows_per_task=3, output_size=(32, 32))
    meta = streams.meta
    labelled_case = split.labelled_cases[0]
    labelled_rows = SHAPES[labelled_case][0]
    unlabelled_rows = sum(SHAPES[c][0] for c in split.unlabelled_cases)
    assert meta.unlabelled_rows_per_epoch == unlabelled_rows
    assert meta.labelled_repeat == -(-unlabelled_rows // labelled_rows)
    assert meta.labelled_rows_per_epoch == labelled_rows * meta.labelled_repeat >= unlabelled_rows
    assert meta.iter_kwargs() == {"local_shuffle_buffer_size": 256}

    labelled = epoch_rows(streams.labelled)
    assert len(labelled) == meta.labelled_rows_per_epoch
    assert {z: labelled.count((0, z)) for z in range(labelled_rows)} == dict.fromkeys(range(labelled_rows), meta.labelled_repeat)
    first = next(iter(streams.unlabelled.iter_batches(batch_size=2, batch_format="numpy")))
    assert set(first) == {"image", "case", "z"}  # labels of the unlabelled stream are never read

    # what Ray Train's DataConfig does for each worker: streaming_split(n, equal=True)
    shards = streams.unlabelled.streaming_split(2, equal=True)
    got: list[list[tuple[int, int]]] = [[], []]

    def consume(rank: int) -> None:
        for batch in shards[rank].iter_batches(batch_size=3, batch_format="numpy"):
            got[rank] += list(zip(batch["case"].tolist(), batch["z"].tolist()))

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(got[0]) == len(got[1]) > 0
    assert not set(got[0]) & set(got[1])
    assert len(got[0]) + len(got[1]) >= unlabelled_rows - 1  # equal=True may drop one odd row


def test_labelled_stream_keeps_the_split_case_order_and_the_stored_labels(ray_cluster, store):
    split = LabelSplit(seed=0, label_ratio=None, num_labelled_patients=2, labelled_patients=("patient2", "patient0"),
                       unlabelled_patients=(), labelled_cases=("c2", "c0"), unlabelled_cases=())
    streams = build_streams(store.url, None, split, output_size=None)
    assert streams.unlabelled is None and streams.meta.labelled_case_table == ("c2", "c0")
    rows = []
    for batch in streams.labelled.iter_batches(batch_size=5, batch_format="numpy"):
        for label, case, z in zip(batch["label"], batch["case"], batch["z"]):
            np.testing.assert_array_equal(label, store.read_slice(split.labelled_cases[case], int(z))[1])
            rows.append((int(case), int(z)))
    assert sorted(rows) == [(0, z) for z in range(7)] + [(1, z) for z in range(5)]  # every slice once


def test_settings_from_the_run_config():
    from action_ray.config import DataConfig

    settings = StreamSettings.from_config(DataConfig(slice_size=128, intensity_window=(-100, 200)))
    assert settings.mode == "slice" and settings.output_size == (128, 128)
    assert settings.normalisation.method == "window" and settings.normalisation.window == (-100.0, 200.0)
    three_d = StreamSettings.from_config(DataConfig(dims=3, patch_size=(16, 32, 32), normalisation="zscore"))
    assert three_d.mode == "patch" and three_d.patch_size == (16, 32, 32)
    assert three_d.normalisation.method == "zscore" and three_d.output_size is None
    with pytest.raises(ConfigError, match="intensity_window"):
        StreamSettings.from_config(DataConfig(normalisation="zscore", intensity_window=(0, 1)))


@pytest.mark.slow
def test_streaming_stays_bounded_when_an_epoch_exceeds_the_object_store(ray_cluster, store):
    """~360 MB of resized rows flow through a 256 MiB object store without being held at once."""
    cases = list(SHAPES) * 8
    source = VolumeSliceDatasource(store.url, None, cases, output_size=(640, 640),
                                   image_interpolation="bilinear", target_task_bytes=8 * 2**20)
    epoch_bytes = source.estimate_inmemory_data_size()
    assert epoch_bytes > OBJECT_STORE_BYTES * 1.2
    dataset = dataset_from_source(source, shuffle="blocks")
    rows = 0
    for batch in dataset.iter_batches(batch_size=16, batch_format="numpy"):
        assert batch["image"].shape[1:] == (1, 640, 640)
        rows += len(batch["z"])
    assert rows == source.num_rows() == 8 * sum(s[0] for s in SHAPES.values())
    stats = dataset.stats()
    assert "ReadVolumeSlice" in stats and "spilled" not in stats.lower()


def test_streams_feed_a_torch_trainer_as_torch_batches(ray_cluster, store, tmp_path):
    """Local-mode TorchTrainer (num_workers=0): the datasets= path the training loop uses."""
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from action_ray.data.streams import train_data_config

    split = label_split(store, num_labelled_patients=2, seed=0)
    streams = build_streams(store.url, None, split, output_size=(32, 32), rows_per_task=4)
    iter_kwargs = streams.meta.iter_kwargs()

    def loop(config):
        import ray.train

        labelled = ray.train.get_dataset_shard("labelled")
        unlabelled = ray.train.get_dataset_shard("unlabelled")
        pairs = zip(labelled.iter_torch_batches(batch_size=4, drop_last=True, **iter_kwargs),
                    unlabelled.iter_torch_batches(batch_size=4, drop_last=True, **iter_kwargs))
        shapes = []
        for lab, unl in pairs:
            assert lab["image"].dtype == torch.float32 and lab["label"].dtype == torch.uint8
            assert lab["case"].dtype == torch.int32 and "label" not in unl
            shapes.append((tuple(lab["image"].shape), tuple(lab["label"].shape), tuple(unl["image"].shape)))
        return shapes

    result = TorchTrainer(
        loop, scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name="data-local", storage_path=str(tmp_path)),
        datasets={"labelled": streams.labelled, "unlabelled": streams.unlabelled},
        dataset_config=train_data_config(),
    ).fit()
    shapes = result.return_value
    assert len(shapes) == streams.meta.unlabelled_rows_per_epoch // 4
    assert set(shapes) == {((4, 1, 32, 32), (4, 32, 32), (4, 1, 32, 32))}
