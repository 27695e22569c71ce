"""The volume store on a local disk: round trips, listing, atomic writes, errors, OME-NGFF metadata."""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import pickle

import numpy as np
import pytest
import zarr

from action_ray.errors import CaseError, StoreError
from action_ray.store import CaseInfo, CaseMeta, VolumeStore, create_store, open_store
from action_ray.store.catalog import Catalog

CLASSES = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}


def smooth_volume(shape, seed):
    """An MR-like float32 volume (smooth field + noise) and a 4-class label from its quantiles."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=shape), sigma=(1, 3, 3))
    image = (200 + 800 * field + rng.normal(scale=5, size=shape)).astype(np.float32)
    label = np.digitize(field, np.quantile(field, [0.55, 0.75, 0.9])).astype(np.uint8)
    return image, label


def meta(case_id, patient="p001", split="train", spacing=(10.0, 1.25, 1.5), **extra):
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0]).tolist()
    return CaseMeta(case_id=case_id, patient_id=patient, split=split, spacing=spacing, affine=affine,
                    source={"image": f"/data/{case_id}.nii.gz", "label": f"/data/{case_id}_gt.nii.gz"},
                    extra=dict(extra))


@pytest.fixture
def store(tmp_path) -> VolumeStore:
    return create_store(str(tmp_path / "s.zarr"), name="phantoms", modality="MR", layout="acdc",
                        classes=CLASSES)


@pytest.mark.parametrize("chunking", ["slice", "patch"])
def test_round_trip_is_bit_exact(store, chunking):
    image, label = smooth_volume((9, 40, 72), seed=1)
    store.write_case(meta("c1", frame=1, phase="ED"), image, label, chunking=chunking)

    reader = open_store(store.url)
    got_image, got_label = reader.read_volume("c1")
    assert got_image.dtype == np.float32 and got_label.dtype == np.uint8
    assert np.array_equal(got_image, image) and np.array_equal(got_label, label)
    for z in (0, 4, 8):
        s_image, s_label = reader.read_slice("c1", z)
        assert s_image.shape == (40, 72)
        assert np.array_equal(s_image, image[z]) and np.array_equal(s_label, label[z])
    box = (slice(2, 7), slice(5, 37), slice(None, 70))
    p_image, p_label = reader.read_patch("c1", box)
    assert np.array_equal(p_image, image[2:7, 5:37, :70]) and np.array_equal(p_label, label[2:7, 5:37, :70])

    expected_chunks = (1, 40, 72) if chunking == "slice" else (9, 40, 64)
    assert zarr.open_array(store.url, path=store.array_key("c1"), mode="r").chunks == expected_chunks


def test_metadata_spacing_stats_and_counts(store):
    image, label = smooth_volume((6, 24, 30), seed=2)
    store.write_case(meta("c1", spacing=(8.0, 1.5625, 1.5625), frame=12), image, label)
    info = open_store(store.url).case("c1")
    assert isinstance(info, CaseInfo)
    assert info.spacing == (8.0, 1.5625, 1.5625) and store.spacing("c1") == (8.0, 1.5625, 1.5625)
    assert info.shape == (6, 24, 30) and info.has_label and info.patient_id == "p001"
    assert info.affine[0][0] == 1.5625 and info.affine[2][2] == 8.0
    assert info.source["label"] == "/data/c1_gt.nii.gz"
    assert info.extra == {"frame": 12}
    assert info.stats["min"] == pytest.approx(float(image.min()))
    assert info.stats["max"] == pytest.approx(float(image.max()))
    assert info.stats["mean"] == pytest.approx(float(image.astype(np.float64).mean()))
    assert info.stats["std"] == pytest.approx(float(image.astype(np.float64).std()))
    assert info.stats["p99_5"] == pytest.approx(float(np.percentile(image, 99.5)))
    assert info.label_counts == {str(c): int((label == c).sum()) for c in CLASSES}
    assert store.dataset_meta["classes"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert store.classes == CLASSES


def test_unlabelled_cases_and_list_filters(store):
    image, label = smooth_volume((4, 16, 16), seed=3)
    store.write_case(meta("a_lab", patient="p1", split="train"), image, label)
    store.write_case(meta("b_unl", patient="p2", split="train"), image, None)
    store.write_case(meta("c_val", patient="p3", split="val"), image, label)
    store.write_case(meta("d_tst", patient="p4", split="test"), image, None, chunking="patch")

    ids = lambda infos: [i.case_id for i in infos]  # noqa: E731
    assert ids(store.list_cases()) == ["a_lab", "b_unl", "c_val", "d_tst"]
    assert ids(store.list_cases(split="train")) == ["a_lab", "b_unl"]
    assert ids(store.list_cases(has_label=False)) == ["b_unl", "d_tst"]
    assert ids(store.list_cases(split="train", has_label=True)) == ["a_lab"]
    assert store.list_cases(split="nope") == []
    unl = store.case("b_unl")
    assert not unl.has_label and unl.label_counts is None
    got, got_label = store.read_slice("b_unl", 1)
    assert got_label is None and np.array_equal(got, image[1])
    assert store.read_patch("d_tst", (slice(0, 2), slice(0, 3), slice(0, 3)))[1] is None


def test_many_cases_read_their_metadata_in_one_batch(store, monkeypatch):
    image, label = smooth_volume((3, 8, 8), seed=3)
    for case_id, split in (("a", "train"), ("b", "val"), ("c", "train")):
        store.write_case(meta(case_id, split=split), image, label)
    store.write_case(meta("half"), image, label)
    _break_marker(store, "half")
    reader = open_store(store.url)
    one_by_one = []
    monkeypatch.setattr(reader._catalog, "read_marker", lambda case_id: one_by_one.append(case_id))

    infos = reader.cases(["c", "a", "c", "b"])
    assert [(i.case_id, i.split) for i in infos] == [("c", "train"), ("a", "train"), ("c", "train"), ("b", "val")]
    assert infos == [store.case(i) for i in ("c", "a", "c", "b")]
    assert one_by_one == []  # one batch read, never a round trip per case
    monkeypatch.undo()
    with pytest.raises(StoreError, match="'half' is incomplete"):
        reader.cases(["a", "half"])
    with pytest.raises(StoreError, match="no case 'nope'"):
        reader.cases(["nope"])


def _break_marker(store, case_id):
    """Make a complete case look like a killed writer's leftover: no marker, a chunk gone."""
    os.remove(f"{store.url}/complete/{case_id}.json")
    chunks = sorted(pathlib.Path(store.url, "cases", case_id, "image", "c").rglob("*"))
    next(p for p in chunks if p.is_file()).unlink()


def test_half_written_case_is_invisible_and_replaced(store):
    image, label = smooth_volume((5, 16, 20), seed=4)
    store.write_case(meta("done"), image, label)
    store.write_case(meta("half"), image, label)
    _break_marker(store, "half")

    reader = open_store(store.url)
    assert [c.case_id for c in reader.list_cases()] == ["done"]
    assert not reader.is_complete("half") and reader.is_complete("done")
    assert reader.incomplete_cases() == ["half"]
    with pytest.raises(StoreError, match="incomplete"):
        reader.read_slice("half", 0)

    new_image = image + 1
    reader.write_case(meta("half"), new_image, None)  # no overwrite needed for a leftover
    assert reader.is_complete("half")
    got, got_label = open_store(store.url).read_volume("half")
    assert np.array_equal(got, new_image) and got_label is None
    assert not os.path.exists(f"{store.url}/cases/half/labels")  # the old label did not survive


def test_writer_killed_before_marker_leaves_invisible_case(store, monkeypatch):
    image, label = smooth_volume((3, 8, 8), seed=5)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("writer killed")

    push = VolumeStore._put_objects

    def killed_before_case_document(self, key, objects):
        if "zarr.json" in objects:
            raise KeyboardInterrupt("writer killed")
        push(self, key, objects)

    # killed once the chunks are pushed, before the case's own document
    monkeypatch.setattr(VolumeStore, "_put_objects", killed_before_case_document)
    with pytest.raises(KeyboardInterrupt):
        store.write_case(meta("k1"), image, label)
    monkeypatch.undo()
    assert store.list_cases() == [] and store.incomplete_cases() == ["k1"]
    # arrays are all there; only the marker is missing
    assert np.array_equal(zarr.open_array(store.url, path="cases/k1/image", mode="r")[:], image)

    # killed after the group flag flipped but before the marker: still invisible
    monkeypatch.setattr(Catalog, "put_marker", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_case(meta("k3"), image, label)
    monkeypatch.undo()
    doc = json.load(open(f"{store.url}/cases/k3/zarr.json"))
    assert doc["attributes"]["action_ray"]["complete"] is True
    assert store.list_cases() == [] and not store.is_complete("k3")
    with pytest.raises(StoreError, match="incomplete"):
        open_store(store.url).case("k3")

    # a directory without even a group document is a leftover too
    (pathlib.Path(store.url) / "cases" / "k2" / "image").mkdir(parents=True)
    assert store.incomplete_cases() == ["k1", "k2", "k3"]
    assert store.remove_incomplete() == ["k1", "k2", "k3"]
    assert store.incomplete_cases() == [] and store.list_cases() == []


@pytest.mark.parametrize("chunking", ["slice", "patch"])
def test_case_objects_are_the_bytes_zarr_writes_itself(store, tmp_path, chunking):
    """The case is encoded in memory and pushed as files: every array document and chunk must
    be what zarr writes when it creates the same array in a store directly, zarr must read each
    group document back with the attributes that were written, and the recorded
    chunk counts must be what zarr reports (an all-background label slice is not stored)."""
    from action_ray.store.codecs import chunk_shape, image_compressors, label_compressors, shard_shape

    image, label = smooth_volume((9, 40, 72), seed=11)
    label[2] = 0
    store.write_case(meta("z1"), image, label, chunking=chunking)
    case = pathlib.Path(store.url, "cases", "z1")
    for kind, data, compressors, fill in (("image", image, image_compressors(), 0.0),
                                          ("labels/label/0", label, label_compressors(), 0)):
        direct = zarr.create_array(zarr.storage.LocalStore(tmp_path / "direct" / kind), shape=data.shape,
                                   dtype=data.dtype, chunks=chunk_shape(data.shape, chunking),
                                   shards=shard_shape(data.shape, chunking), compressors=compressors, dimension_names=("z", "y", "x"), fill_value=fill)
        direct[...] = data
        ours = {p.relative_to(case / kind): p.read_bytes() for p in (case / kind).rglob("*") if p.is_file()}
        theirs = {p.relative_to(tmp_path / "direct" / kind): p.read_bytes()
                  for p in (tmp_path / "direct" / kind).rglob("*") if p.is_file()}
        assert ours == theirs
    written = {"": {"action_ray", "ome"}, "labels": {"ome"}, "labels/label": {"ome"}}
    for group, keys in written.items():  # group documents: one-line JSON that zarr reads back
        document = json.loads((case / group / "zarr.json").read_bytes())
        assert document["zarr_format"] == 3 and document["node_type"] == "group"
        opened = zarr.open_group(str(case / group), mode="r")
        assert set(opened.attrs.asdict()) == keys and opened.attrs.asdict() == document["attributes"]
    info = open_store(store.url).case("z1")
    assert info.stored_chunks["image"] == zarr.open_array(str(case / "image")).nchunks_initialized
    assert info.stored_chunks["label"] == zarr.open_array(str(case / "labels/label/0")).nchunks_initialized
    if chunking == "slice":  # one shard per array, its 9 slices inside; zarr counts 9 chunks
        assert info.stored_chunks == {"image": 9, "label": 9}
        for kind in ("image", "labels/label/0"):
            assert [p.relative_to(case / kind).as_posix() for p in (case / kind / "c").rglob("*") if p.is_file()] \
                == ["c/0/0/0"]
        shard = (case / "labels/label/0/c/0/0/0").read_bytes()
        index = np.frombuffer(shard[-(9 * 16 + 4):-4], dtype="<u8").reshape(9, 2)
        empty = np.iinfo(np.uint64).max
        assert (index[2] == empty).all() and (index[[0, 1, *range(3, 9)]] != empty).all()  # all-0 slice: absent
    else:
        assert info.stored_chunks == {"image": 2, "label": 2}  # (9, 40, 64) cubes: x splits in two
    open_store(store.url).verify_case("z1")


def test_a_case_split_over_several_shards_is_what_zarr_writes(store, tmp_path, monkeypatch):
    """A case larger than one shard (a tall CT): shards of 4 slices, the last one partial (9 = 4 + 4 + 1),
    an all-background label slice inside the second; bytes equal zarr's, values read back exactly."""
    from action_ray.store import codecs

    image, label = smooth_volume((9, 40, 72), seed=12)
    label[5] = 0
    monkeypatch.setattr(codecs, "SHARD_BYTES", 4 * 40 * 72 * codecs.SHARD_ITEMSIZE)
    store.write_case(meta("tall"), image, label)
    case = pathlib.Path(store.url, "cases", "tall")
    for kind, data, compressors, fill in (("image", image, codecs.image_compressors(), 0.0),
                                          ("labels/label/0", label, codecs.label_compressors(), 0)):
        assert codecs.shard_shape(data.shape, "slice") == (4, 40, 72)
        direct = zarr.create_array(zarr.storage.LocalStore(tmp_path / "direct" / kind), shape=data.shape,
                                   dtype=data.dtype, chunks=(1, 40, 72), shards=(4, 40, 72), compressors=compressors,
                                   dimension_names=("z", "y", "x"), fill_value=fill)
        direct[...] = data
        ours = {p.relative_to(case / kind): p.read_bytes() for p in (case / kind).rglob("*") if p.is_file()}
        theirs = {p.relative_to(tmp_path / "direct" / kind): p.read_bytes()
                  for p in (tmp_path / "direct" / kind).rglob("*") if p.is_file()}
        assert ours == theirs and len(ours) == 4  # zarr.json + 3 shards
    back_image, back_label = open_store(store.url).read_volume("tall")
    assert np.array_equal(back_image, image) and np.array_equal(back_label, label)
    assert open_store(store.url).case("tall").stored_chunks == {"image": 12, "label": 12}  # 3 shards x 4
    open_store(store.url).verify_case("tall")


def test_rewriting_a_complete_case_requires_overwrite(store):
    image, label = smooth_volume((3, 8, 8), seed=6)
    store.write_case(meta("c1"), image, label)
    with pytest.raises(StoreError, match="already complete.*overwrite=True"):
        store.write_case(meta("c1"), image * 2, label)
    assert np.array_equal(store.read_volume("c1")[0], image)
    store.write_case(meta("c1", split="val"), image * 2, None, overwrite=True)
    assert store.case("c1").split == "val" and not store.case("c1").has_label
    assert np.array_equal(store.read_volume("c1")[0], image * 2)


def _write_some(url, ids):
    store = open_store(url)
    image, label = smooth_volume((3, 12, 12), seed=len(ids))
    for case_id in ids:
        store.write_case(meta(case_id, patient=case_id), image, label)


def test_concurrent_writers_of_different_cases(store):
    ctx = multiprocessing.get_context("spawn")
    groups = [[f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]]
    procs = [ctx.Process(target=_write_some, args=(store.url, g)) for g in groups]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert [c.case_id for c in open_store(store.url).list_cases()] == sorted(groups[0] + groups[1])


def test_store_pickles_for_ray_tasks(store):
    image, label = smooth_volume((3, 8, 8), seed=7)
    store.write_case(meta("c1"), image, label)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.classes == CLASSES
    assert np.array_equal(clone.read_slice("c1", 2)[1], label[2])


def test_open_errors_name_the_store(tmp_path):
    missing = tmp_path / "nope.zarr"
    with pytest.raises(StoreError, match=f"{missing}.*no store here"):
        open_store(str(missing))
    plain = tmp_path / "plain.zarr"
    zarr.create_group(str(plain), attributes={"something": 1})
    with pytest.raises(StoreError, match="not an action-ray store"):
        open_store(str(plain))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not empty"):
        create_store(str(junk), name="x", modality="MR", layout="acdc", classes=CLASSES)


def test_create_store_checks_compatibility(store):
    same = create_store(store.url, name="phantoms", modality="MR", layout="acdc", classes=CLASSES)
    assert same.dataset_meta == store.dataset_meta
    with pytest.raises(StoreError, match="classes"):
        create_store(store.url, name="x", modality="MR", layout="acdc", classes={0: "bg", 1: "liver"})
    with pytest.raises(StoreError, match="layout"):
        create_store(store.url, name="x", modality="MR", layout="lits", classes=CLASSES)
    with pytest.raises(StoreError, match="already exists"):
        create_store(store.url, name="x", modality="MR", layout="acdc", classes=CLASSES, exist_ok=False)


def test_read_errors(store):
    image, label = smooth_volume((4, 10, 12), seed=8)
    store.write_case(meta("c1"), image, label)
    with pytest.raises(StoreError, match=r"no case 'c9'.*action-ray info"):
        store.case("c9")
    with pytest.raises(StoreError, match="invalid case id"):
        store.read_slice("../etc", 0)
    for z in (4, -1, 1.5):
        with pytest.raises(StoreError, match=f"{store.url}.*out of range"):
            store.read_slice("c1", z)
    for box in [(slice(0, 5), slice(None), slice(None)), (slice(2, 2), slice(None), slice(None)),
                (slice(0, 2), slice(-3, None), slice(None)), (slice(0, 4, 2), slice(None), slice(None))]:
        with pytest.raises(StoreError, match="out of range"):
            store.read_patch("c1", box)


def test_write_validation(store):
    image, label = smooth_volume((4, 10, 12), seed=9)
    with pytest.raises(CaseError, match=r"label values \[7\]"):
        store.write_case(meta("c1"), image, np.where(label == 3, 7, label))
    with pytest.raises(CaseError, match="shape"):
        store.write_case(meta("c1"), image, label[:, :5])
    with pytest.raises(CaseError, match="split"):
        store.write_case(meta("c1", split="training"), image, label)
    with pytest.raises(CaseError, match="spacing"):
        store.write_case(meta("c1", spacing=(0.0, 1.0, 1.0)), image, label)
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CaseError, match="NaN"):
        store.write_case(meta("c1"), bad, label)
    with pytest.raises(StoreError, match="chunking"):
        store.write_case(meta("c1"), image, label, chunking="cube")
    assert store.list_cases() == [] and store.incomplete_cases() == []
    # float64 images and float label maps from NIfTI are accepted and stored as float32 / uint8
    store.write_case(meta("c1"), image.astype(np.float64), label.astype(np.float32))
    assert np.array_equal(store.read_volume("c1")[1], label)


def _ome(path):
    return json.load(open(path))["attributes"]["ome"]


def test_case_is_an_ome_ngff_05_image_with_label_image(store):
    """Structure of OME-NGFF 0.5 (Zarr v3) checked by hand against the spec text."""
    image, label = smooth_volume((5, 12, 14), seed=10)
    spacing = (6.0, 1.25, 1.5)
    store.write_case(meta("c1", spacing=spacing), image, label)
    case_dir = f"{store.url}/cases/c1"

    img = _ome(f"{case_dir}/zarr.json")
    assert img["version"] == "0.5"
    (ms,) = img["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" and a["unit"] == "millimeter" for a in ms["axes"])
    (level,) = ms["datasets"]
    assert level["coordinateTransformations"] == [{"type": "scale", "scale": list(spacing)}]
    image_array = zarr.open_group(case_dir, mode="r")[level["path"]]
    assert image_array.metadata.dimension_names == ("z", "y", "x")
    assert np.array_equal(image_array[:], image)

    labels = _ome(f"{case_dir}/labels/zarr.json")
    assert labels == {"version": "0.5", "labels": ["label"]}
    lab = _ome(f"{case_dir}/labels/{labels['labels'][0]}/zarr.json")
    (lms,) = lab["multiscales"]
    assert len(lms["datasets"]) == len(ms["datasets"])
    assert lms["datasets"][0]["coordinateTransformations"] == level["coordinateTransformations"]
    il = lab["image-label"]
    assert il["source"] == {"image": "../../"}
    assert {c["label-value"] for c in il["colors"]} == set(CLASSES)
    assert all(len(c["rgba"]) == 4 and all(0 <= v <= 255 for v in c["rgba"]) for c in il["colors"])
    assert {p["label-value"]: p["class"] for p in il["properties"]} == CLASSES
    label_array = zarr.open_group(f"{case_dir}/labels/label", mode="r")[lms["datasets"][0]["path"]]
    assert label_array.dtype == np.uint8 and label_array.metadata.dimension_names == ("z", "y", "x")
    # the OME label image IS the store's label array: same key, same bytes, no second copy
    assert f"cases/c1/labels/label/{lms['datasets'][0]['path']}" == store.array_key("c1", "label")
    assert np.array_equal(label_array[:], store.read_volume("c1")[1])
    assert sorted(zarr.open_group(case_dir, mode="r").array_keys()) == ["image"]
