"""End-to-end ingest into a local store: round trip, resume, overwrite, bad input, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from action_ray.cli import main
from action_ray.errors import ActionRayError
from action_ray.ingest.runner import EXIT_SKIPPED_CASES, IngestOptions, run_ingest
from action_ray.store import open_store
from niftis import expected_arrays, make_affine, make_volume, save, truncate_gzip, write_acdc, write_folder, write_lits


def ingest(src: Path, dst: Path, layout: str, **kwargs):
    options = IngestOptions(src=str(src), dst=str(dst), layout=layout, progress=False, **kwargs)
    return run_ingest(options, say=lambda line: None)


def file_mtimes(store_dir: Path, case_id: str) -> dict[str, int]:
    case_dir = store_dir / "cases" / case_id
    return {str(p.relative_to(case_dir)): p.stat().st_mtime_ns for p in case_dir.rglob("*") if p.is_file()}


def test_acdc_round_trip_is_bit_exact_with_metadata(tmp_path):
    written = write_acdc(tmp_path / "src", 3)
    report = ingest(tmp_path / "src", tmp_path / "s.zarr", "acdc", workers=2)
    assert report.exit_code == 0 and report.count("written") == 6
    store = open_store(str(tmp_path / "s.zarr"))
    assert store.classes == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    infos = {info.case_id: info for info in store.list_cases()}
    assert sorted(infos) == sorted(w.case_id for w in written)
    for w in written:
        image, label = store.read_volume(w.case_id)
        np.testing.assert_array_equal(image, expected_arrays(w.image))
        np.testing.assert_array_equal(label, expected_arrays(w.label))
        info = infos[w.case_id]
        assert info.patient_id == w.patient_id and info.spacing == (6.0, 1.25, 1.5)
        assert info.source["image"].endswith(w.image.name) and info.source["label"].endswith(w.label.name)
        assert info.extra["phase"] in ("ED", "ES") and info.extra["group"]
    # the ACDC recipe's split file (datasets/acdc/acdc-split.yaml) decides, for both frames of a patient
    from action_ray.recipes import load_recipe

    split_file = load_recipe("acdc").split_assignment()
    assert {info.patient_id: info.split for info in infos.values()} == {
        p: split_file[p] for p in ("patient001", "patient002", "patient003")}
    # a 3-D patch read back equals the same box of the source NIfTI, voxel for voxel
    box = (slice(1, 4), slice(3, 11), slice(None, 17))
    for w in written[:2]:
        image, label = store.read_patch(w.case_id, box)
        np.testing.assert_array_equal(image, expected_arrays(w.image)[box])
        np.testing.assert_array_equal(label, expected_arrays(w.label)[box])


def test_rerun_is_a_no_op_and_overwrite_is_explicit(tmp_path):
    write_lits(tmp_path / "src", 3, unlabelled=(1,))
    dst = tmp_path / "s.zarr"
    ingest(tmp_path / "src", dst, "lits")
    before = {c: file_mtimes(dst, c) for c in ("volume-0", "volume-1", "volume-2")}
    again = ingest(tmp_path / "src", dst, "lits")
    assert again.count("complete") == 3 and again.count("written") == 0 and again.bytes_read == 0
    assert {c: file_mtimes(dst, c) for c in before} == before
    store = open_store(str(dst))
    assert store.case("volume-1").has_label is False and store.case("volume-1").split == "train"
    forced = ingest(tmp_path / "src", dst, "lits", overwrite=True)
    assert forced.count("written") == 3
    assert file_mtimes(dst, "volume-0") != before["volume-0"]


def test_resuming_with_a_different_split_is_refused(tmp_path):
    write_lits(tmp_path / "src", 6)
    ingest(tmp_path / "src", tmp_path / "s.zarr", "lits", seed=0)
    with pytest.raises(ActionRayError, match="use the seed/split file of the first run"):
        ingest(tmp_path / "src", tmp_path / "s.zarr", "lits", seed=12345)


def test_split_file_option_and_patch_chunking(tmp_path):
    split_file = tmp_path / "split.yaml"
    split_file.write_text("train: [volume-0]\nval: [volume-1]\ntest: [volume-2]\n")
    written = write_lits(tmp_path / "src", 3)
    ingest(tmp_path / "src", tmp_path / "s.zarr", "lits", split_file=str(split_file), chunking="patch")
    store = open_store(str(tmp_path / "s.zarr"))
    assert {i.case_id: i.split for i in store.list_cases()} == {"volume-0": "train", "volume-1": "val", "volume-2": "test"}
    import zarr

    assert zarr.open_array(str(tmp_path / "s.zarr/cases/volume-0/image"), mode="r").chunks == (5, 16, 20)
    np.testing.assert_array_equal(store.read_volume("volume-2")[0], expected_arrays(written[2].image))


def test_bad_cases_are_skipped_reported_and_the_rest_ingested(tmp_path, capsys):
    src = tmp_path / "src"
    written = write_folder(src, 12, with_patient=False)
    truncate_gzip(written[0].image)
    save(written[1].label, make_volume(seed=1, shape=(20, 16, 4))[1])          # shape mismatch
    image, _ = make_volume(seed=2)
    image[0, 0, 0] = np.nan
    save(written[2].image, image)                                                # NaN
    _, label = make_volume(seed=3, n_classes=2)
    label[1, 1, 1] = 9
    save(written[3].label, label)                                                # undeclared class
    _, label = make_volume(seed=4, n_classes=2)
    save(written[4].label, label, make_affine(origin=(-9.0, 20.0, 5.0)))         # label grid shifted 1 mm
    save(written[5].label, make_volume(seed=5, n_classes=2)[1].astype(np.float32) * 0.5)  # non-integer
    image, _ = make_volume(seed=6)
    image[2, 2, 2] = -np.inf
    save(written[6].image, image)                                                # Inf
    save(written[7].image, np.zeros((20, 16, 5), np.float32))                    # empty (blank) volume
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\ntitle: test\nmodality: CT\nlayout: folder\nclasses: {0: bg, 1: organ}\n"
                      "normalisation: {method: zscore}\nsplit: {rule: seed}\n")
    rc = main(["ingest", str(src), str(tmp_path / "s.zarr"), "--layout", "folder", "--recipe", str(recipe),
               "--no-progress", "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == EXIT_SKIPPED_CASES
    assert "4 written, 0 already complete, 8 skipped" in out
    for bad, reason in [(written[0].image, "truncated or corrupt gzip"), (written[1].label, "label shape"),
                        (written[2].image, "NaN"), (written[3].label, "label values [9]"),
                        (written[4].label, "label affine differs"), (written[5].label, "non-integer"),
                        (written[6].image, "1 Inf"), (written[7].image, "constant")]:
        line = next(l for l in out.splitlines() if str(bad) in l)
        assert reason in line
    store = open_store(str(tmp_path / "s.zarr"))
    assert sorted(i.case_id for i in store.list_cases()) == [w.case_id for w in written[8:]]
    assert store.incomplete_cases() == []


def test_acdc_missing_gt_is_reported_and_the_other_frame_ingested(tmp_path, capsys):
    write_acdc(tmp_path / "src", 1)
    missing = tmp_path / "src/training/patient001/patient001_frame11_gt.nii.gz"
    missing.unlink()
    rc = main(["ingest", str(tmp_path / "src"), str(tmp_path / "s.zarr"), "--layout", "acdc", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == EXIT_SKIPPED_CASES and str(missing) in out and "declared in Info.cfg" in out
    assert "run the same command again" in out.splitlines()[-1]
    assert [i.case_id for i in open_store(str(tmp_path / "s.zarr")).list_cases()] == ["patient001_frame01"]


def test_folder_layout_without_recipe_and_bad_workers_are_one_line_errors(tmp_path, capsys):
    write_folder(tmp_path / "src", 2)
    assert main(["ingest", str(tmp_path / "src"), str(tmp_path / "s.zarr"), "--layout", "folder"]) == 2
    assert "needs --recipe" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "src"), str(tmp_path / "s.zarr"), "--layout", "lits", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_unreachable_or_misconfigured_source_is_one_line_naming_src_without_secrets(tmp_path, capsys):
    from conftest import free_port

    secrets = ["--storage-option", "key=AKIA-PRIVATE-ID", "--storage-option", "secret=PRIVATE-SECRET-VALUE"]
    dst = tmp_path / "s.zarr"
    nobody = f"endpoint_url=http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    rc = main(["ingest", "s3://scans/acdc", str(dst), "--layout", "acdc", "--no-progress", *secrets,
               "--storage-option", nobody, "--storage-option", "config_kwargs.retries.max_attempts=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "source s3://scans/acdc: cannot list or read it" in err and "endpoint" in err
    assert "PRIVATE" not in err and not dst.exists()

    rc = main(["ingest", "s3://scans/acdc", str(dst), "--layout", "acdc", "--no-progress", *secrets,
               "--storage-option", "endpont_url=http://127.0.0.1:9"])  # misspelt option name
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "endpont_url" in err and "--storage-option name is not known" in err and "PRIVATE" not in err


def test_dst_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    write_lits(tmp_path / "src", 1)
    dst = tmp_path / "notes.txt"
    dst.write_text("keep me")
    assert main(["ingest", str(tmp_path / "src"), str(dst), "--layout", "lits", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(dst) in err and "is a file" in err
    assert dst.read_text() == "keep me"
