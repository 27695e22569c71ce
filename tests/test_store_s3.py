"""The volume store on s3:// (moto on 127.0.0.1): same behaviour as local, no credential leaks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from action_ray.cli import main
from action_ray.errors import StoreError
from action_ray.store import CaseMeta, create_store, open_store

CLASSES = {0: "background", 1: "liver", 2: "tumour"}


def volume(shape, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 30, size=shape).astype(np.float32)
    label = rng.choice([0, 1, 2], p=[0.8, 0.15, 0.05], size=shape).astype(np.uint8)
    return image, label


def meta(case_id, split="train"):
    return CaseMeta(case_id=case_id, patient_id=f"pat-{case_id}", split=split, spacing=(2.5, 0.7, 0.7),
                    affine=np.eye(4).tolist(), source={"image": f"s3://raw/{case_id}.nii.gz", "label": None})


def write_and_read_back(url, storage_options):
    store = create_store(url, name="lits-mini", modality="CT", layout="lits", classes=CLASSES,
                         storage_options=storage_options)
    image, label = volume((6, 20, 24), seed=1)
    store.write_case(meta("c1"), image, label)
    store.write_case(meta("c2", split="val"), image[:4], None, chunking="patch")

    reader = open_store(url, storage_options)
    assert [c.case_id for c in reader.list_cases()] == ["c1", "c2"]
    assert [c.case_id for c in reader.list_cases(has_label=True)] == ["c1"]
    got_image, got_label = reader.read_slice("c1", 3)
    assert np.array_equal(got_image, image[3]) and np.array_equal(got_label, label[3])
    p_image, p_label = reader.read_patch("c2", (slice(1, 3), slice(2, 20), slice(0, 24)))
    assert np.array_equal(p_image, image[1:3, 2:20]) and p_label is None
    assert np.array_equal(reader.read_volume("c1")[1], label)
    assert reader.spacing("c1") == (2.5, 0.7, 0.7)
    with pytest.raises(StoreError, match="already complete"):
        reader.write_case(meta("c1"), image, label)
    return reader


def test_s3_round_trip_with_storage_options(s3_server, capsys):
    url = f"s3://{s3_server.new_bucket()}/store.zarr"
    write_and_read_back(url, s3_server.storage_options)

    so = s3_server.storage_options
    args = ["info", url, "--json", f"--storage-option=endpoint_url={so['endpoint_url']}",
            f"--storage-option=key={so['key']}", f"--storage-option=secret={so['secret']}",
            "--storage-option=client_kwargs.region_name=us-east-1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert [c["id"] for c in summary["cases"]] == ["c1", "c2"]
    assert s3_server.secret_key not in out and s3_server.access_key not in out


def test_s3_round_trip_with_env_vars_only(s3_env, capsys):
    url = f"s3://{s3_env.new_bucket()}/store.zarr"
    write_and_read_back(url, None)
    assert main(["info", url]) == 0
    out = capsys.readouterr().out
    assert "cases     2 (1 labelled, 1 unlabelled) from 2 patients" in out
    assert s3_env.secret_key not in out and s3_env.access_key not in out


def test_s3_errors_name_the_url_and_never_the_credentials(s3_server, capsys):
    secret_options = {**s3_server.storage_options, "key": "AKIA-VERY-PRIVATE", "secret": "s3cr3t-VALUE-123"}
    bucket = s3_server.new_bucket()
    messages = []
    with pytest.raises(StoreError, match=f"s3://{bucket}/absent.zarr: no store here") as err:
        open_store(f"s3://{bucket}/absent.zarr", secret_options)
    messages.append(str(err.value))
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-4242' does not exist") as err:
        open_store("s3://no-such-bucket-4242/x.zarr", secret_options)
    messages.append(str(err.value))
    unreachable = {**secret_options, "endpoint_url": "http://127.0.0.1:9",
                   "config_kwargs": {"retries": {"max_attempts": 1}}}
    with pytest.raises(StoreError, match=r"s3://.*/x.zarr: cannot read zarr.json.*reachable") as err:
        open_store(f"s3://{bucket}/x.zarr", unreachable)
    messages.append(str(err.value))
    with pytest.raises(StoreError) as err:
        create_store(f"s3://{bucket}/y.zarr", name="x", modality="CT", layout="lits", classes=CLASSES,
                     storage_options=unreachable)
    messages.append(str(err.value))

    store = create_store(f"s3://{bucket}/ok.zarr", name="x", modality="CT", layout="lits", classes=CLASSES,
                         storage_options=secret_options)
    for action in (lambda: store.case("missing"), lambda: store.read_slice("missing", 0)):
        with pytest.raises(StoreError) as err:
            action()
        messages.append(str(err.value))
    # CLI path: one line on stderr, exit 2
    assert main(["info", f"s3://{bucket}/absent.zarr", "--storage-option=key=AKIA-VERY-PRIVATE",
                 "--storage-option=secret=s3cr3t-VALUE-123",
                 f"--storage-option=endpoint_url={s3_server.endpoint_url}"]) == 2
    captured = capsys.readouterr()
    messages.append(captured.err + captured.out)
    assert "no store here" in messages[-1]
    for message in messages:
        assert "AKIA-VERY-PRIVATE" not in message and "s3cr3t-VALUE-123" not in message, message


def test_userinfo_in_url_is_redacted(s3_server):
    with pytest.raises(StoreError) as err:
        open_store("s3://AKIA-IN-URL:SECRET-IN-URL@nobucket/x.zarr", s3_server.storage_options)
    assert "SECRET-IN-URL" not in str(err.value)


def test_s3_index_is_used_only_while_it_matches_the_markers(s3_server, monkeypatch):
    url = f"s3://{s3_server.new_bucket()}/indexed.zarr"
    store = create_store(url, name="x", modality="CT", layout="lits", classes=CLASSES,
                         storage_options=s3_server.storage_options)
    image, label = volume((2, 8, 8), seed=3)
    for case_id in ("c1", "c2", "c3"):
        store.write_case(meta(case_id), image, label)
    assert store.finalize() == 3

    reader = open_store(url, s3_server.storage_options)
    marker_reads = []
    real_cat = reader._fs.cat
    monkeypatch.setattr(reader._fs, "cat",
                        lambda paths, **kw: (marker_reads.extend(paths), real_cat(paths, **kw))[1])
    assert [c.case_id for c in reader.list_cases()] == ["c1", "c2", "c3"]
    assert marker_reads == []  # one LIST + the index, no per-case reads

    writer = open_store(url, s3_server.storage_options)
    writer.write_case(meta("c1", split="test"), image, None, overwrite=True)  # index now stale for c1
    writer._catalog.drop_marker("c2")  # c2 is being rewritten by someone: must disappear at once
    writer.write_case(meta("c4"), image, label)  # not in the index yet
    infos = {c.case_id: c for c in reader.list_cases()}
    assert sorted(infos) == ["c1", "c3", "c4"]
    assert infos["c1"].split == "test" and not infos["c1"].has_label
    assert sorted(p.rsplit("/", 1)[-1] for p in marker_reads) == ["c1.json", "c4.json"]
