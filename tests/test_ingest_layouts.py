"""Discovery of ACDC, LiTS, MSD / nnU-Net and folder+CSV collections (no volume is opened)."""

from __future__ import annotations

import fsspec
import pytest

from action_ray.errors import ActionRayError
from action_ray.ingest.layouts import discover, parse_info_cfg
from niftis import write_acdc, write_folder, write_lits, write_msd

FS = fsspec.filesystem("file")


def by_id(collection):
    return {c.case_id: c for c in collection.cases}


def test_acdc_ed_es_frames_become_cases_with_info_cfg_in_extra(tmp_path):
    written = write_acdc(tmp_path, 2)
    write_acdc(tmp_path, 1, first=101, folder="testing")
    cases = by_id(discover("acdc", FS, str(tmp_path)))
    assert sorted(cases) == sorted([w.case_id for w in written] + ["patient101_frame01", "patient101_frame111"])
    es = cases["patient002_frame12"]
    assert es.patient_id == "patient002"
    assert es.extra["phase"] == "ES" and es.extra["frame"] == 12
    assert es.extra["ed_frame"] == 1 and es.extra["es_frame"] == 12 and es.extra["group"] == "MINF"
    assert es.label.endswith("patient002/patient002_frame12_gt.nii.gz")
    assert cases["patient101_frame01"].extra["acdc_folder"] == "testing"
    assert all(c.problem is None for c in cases.values())


def test_acdc_missing_gt_of_declared_frame_is_a_problem_naming_the_file(tmp_path):
    write_acdc(tmp_path, 1)
    (tmp_path / "training/patient001/patient001_frame11_gt.nii.gz").unlink()
    cases = by_id(discover("acdc", FS, str(tmp_path)))
    assert cases["patient001_frame01"].problem is None
    problem = cases["patient001_frame11"].problem
    assert "patient001_frame11_gt.nii.gz" in problem and "Info.cfg" in problem


def test_acdc_patient_without_any_gt_is_unlabelled(tmp_path):
    write_acdc(tmp_path, 1)
    for gt in (tmp_path / "training/patient001").glob("*_gt.nii.gz"):
        gt.unlink()
    cases = discover("acdc", FS, str(tmp_path)).cases
    assert [c.label for c in cases] == [None, None] and all(c.problem is None for c in cases)


def test_info_cfg_without_es_is_rejected():
    with pytest.raises(ActionRayError, match="ES"):
        parse_info_cfg("ED: 1\nGroup: NOR\n", "x/Info.cfg")


def test_acdc_malformed_info_cfg_skips_only_that_patient(tmp_path):
    write_acdc(tmp_path, 2)
    (tmp_path / "training/patient002/Info.cfg").write_text("ED 1\nES twelve\n")
    cases = by_id(discover("acdc", FS, str(tmp_path)))
    assert cases["patient001_frame01"].problem is None and cases["patient001_frame11"].problem is None
    bad = cases["patient002"]
    assert "patient002/Info.cfg" in bad.problem and "ED" in bad.problem


def test_lits_found_recursively_in_batch_folders_and_unlabelled_volumes_kept(tmp_path):
    write_lits(tmp_path, 4, unlabelled=(3,))
    cases = by_id(discover("lits", FS, str(tmp_path)))
    assert sorted(cases) == ["volume-0", "volume-1", "volume-2", "volume-3"]
    assert "Training Batch 2" in cases["volume-1"].image
    assert cases["volume-3"].label is None
    assert cases["volume-2"].label.endswith("segmentation-2.nii")


@pytest.mark.parametrize("nnunet", [False, True])
def test_msd_and_nnunet_raw(tmp_path, nnunet):
    write_msd(tmp_path, n_train=2, n_test=1, nnunet=nnunet)
    collection = discover("msd", FS, str(tmp_path))
    cases = by_id(collection)
    assert sorted(cases) == ["liver_000", "liver_001", "liver_002"]  # no '._' resource fork, no _0000
    assert cases["liver_002"].label is None and cases["liver_002"].problem is None
    assert cases["liver_000"].label.endswith("labelsTr/liver_000.nii.gz")
    assert collection.classes == {0: "background", 1: "liver", 2: "tumour"}
    assert collection.modality == "CT"


def test_msd_without_dataset_json_says_so(tmp_path):
    write_msd(tmp_path)
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(ActionRayError, match="dataset.json"):
        discover("msd", FS, str(tmp_path))


def test_folder_csv_with_empty_label_patient_and_split(tmp_path):
    write_folder(tmp_path, 4, unlabelled=(3,), splits={0: "val", 1: "val"})
    cases = by_id(discover("folder", FS, str(tmp_path)))
    assert cases["scan_03"].label is None
    assert cases["scan_00"].patient_id == cases["scan_01"].patient_id == "P0"
    assert cases["scan_00"].split == "val" and cases["scan_02"].split is None


def test_folder_csv_listing_a_missing_file_marks_that_case(tmp_path):
    write_folder(tmp_path, 2)
    (tmp_path / "masks/scan_01_mask.nii.gz").unlink()
    cases = by_id(discover("folder", FS, str(tmp_path)))
    assert cases["scan_00"].problem is None
    assert "scan_01_mask.nii.gz" in cases["scan_01"].problem


def test_missing_source_and_empty_source_are_clear_errors(tmp_path):
    with pytest.raises(ActionRayError, match="does not exist"):
        discover("lits", FS, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ActionRayError, match="no lits cases"):
        discover("lits", FS, str(tmp_path / "empty"))
