"""ACDC / LiTS writers and the ``action-ray synth`` / ``bench phantoms`` verbs."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from action_ray.cli import main
from action_ray.synth.cardiac import cardiac_case
from action_ray.synth.layouts import acdc_patient_complete, write_acdc_patient, write_lits_case
from action_ray.synth.liver import liver_case


def _reload(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj).transpose(2, 1, 0), image


def _parse_info(path: Path) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in path.read_text().splitlines() if line.strip())
    return {key.strip(): value.strip() for key, value in pairs}


def _assert_geometry(image: nib.Nifti1Image, spacing_zyx) -> None:
    dz, dy, dx = spacing_zyx
    np.testing.assert_allclose(image.affine, np.diag([dx, dy, dz, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(image.header.get_zooms()[:3], (dx, dy, dz), rtol=1e-6)
    assert image.header.get_xyzt_units()[0] == "mm"


def test_acdc_patient_reloads_with_exact_labels_affine_and_info(tmp_path):
    case = cardiac_case(5, 64)
    paths = write_acdc_patient(tmp_path, 0, case)
    folder = tmp_path / "training" / "patient001"
    ed, es = f"frame{case.ed_frame:02d}", f"frame{case.es_frame:02d}"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["Info.cfg", f"patient001_{ed}.nii.gz", f"patient001_{ed}_gt.nii.gz",
         f"patient001_{es}.nii.gz", f"patient001_{es}_gt.nii.gz"])
    assert set(paths) == set(folder.iterdir())
    for name, expected in ((f"patient001_{ed}.nii.gz", case.ed_image), (f"patient001_{ed}_gt.nii.gz", case.ed_label),
                           (f"patient001_{es}.nii.gz", case.es_image), (f"patient001_{es}_gt.nii.gz", case.es_label)):
        data, image = _reload(folder / name)
        assert image.shape == expected.shape[::-1]  # NIfTI (X, Y, Z)
        assert data.dtype == expected.dtype
        np.testing.assert_array_equal(data, expected)
        _assert_geometry(image, case.spacing)
    info = _parse_info(folder / "Info.cfg")
    assert list(info) == ["ED", "ES", "Group", "Height", "NbFrame", "Weight"]
    assert (int(info["ED"]), int(info["ES"]), info["Group"]) == (case.ed_frame, case.es_frame, case.group)
    assert int(info["NbFrame"]) == case.nb_frames and float(info["Height"]) > 100 and float(info["Weight"]) > 30
    assert acdc_patient_complete(tmp_path, 0) and not acdc_patient_complete(tmp_path, 1)
    # Deterministic gzip (mtime 0): no time stamp in the bytes.
    assert gzip.decompress((folder / f"patient001_{ed}.nii.gz").read_bytes())
    assert (folder / f"patient001_{ed}.nii.gz").read_bytes()[4:8] == b"\x00\x00\x00\x00"


def test_lits_case_reloads_with_exact_labels_and_affine(tmp_path):
    case = liver_case(2, 64)
    write_lits_case(tmp_path, 0, case)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segmentation-0.nii", "volume-0.nii"]
    image_data, image = _reload(tmp_path / "volume-0.nii")
    label_data, label = _reload(tmp_path / "segmentation-0.nii")
    assert image.shape == label.shape == (64, 64, 48)
    np.testing.assert_array_equal(label_data, case.label)
    np.testing.assert_array_equal(image_data, case.image)
    assert set(np.unique(label_data).tolist()) <= {0, 1, 2}
    _assert_geometry(image, case.spacing)
    _assert_geometry(label, case.spacing)
    assert not list(tmp_path.glob(".*part"))  # no temporary files left behind


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cardiac", "liver"])
def test_synth_cli_workers_give_identical_bytes_and_resume_skips(tmp_path, kind, capsys):
    one, two = tmp_path / "w1", tmp_path / "w2"
    assert main(["synth", kind, "--out", str(one), "--cases", "2", "--workers", "1", "--seed", "4"]) == 0
    assert main(["synth", kind, "--out", str(two), "--cases", "2", "--workers", "2", "--seed", "4"]) == 0
    first = _tree(one)
    assert len(first) == (12 if kind == "cardiac" else 6)  # + the recipe hint and the manifest
    assert first == _tree(two)

    # Resume: a complete case is never rewritten; a case with a missing file is regenerated.
    kept = one / "volume-0.nii" if kind == "liver" else one / "training" / "patient001" / "Info.cfg"
    kept_stat = kept.stat().st_mtime_ns
    if kind == "cardiac":
        missing = next((one / "training" / "patient002").glob("*_gt.nii.gz"))
    else:
        missing = one / "segmentation-1.nii"
    missing.unlink()
    capsys.readouterr()
    assert main(["synth", kind, "--out", str(one), "--cases", "2", "--workers", "1", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1" in printed and "skipped 1" in printed
    assert kept.stat().st_mtime_ns == kept_stat
    assert _tree(one) == first


def test_synth_cli_seed_changes_output_and_rejects_file_out(tmp_path, capsys):
    assert main(["synth", "liver", "--out", str(tmp_path / "a"), "--cases", "1", "--workers", "1", "--seed", "1"]) == 0
    assert main(["synth", "liver", "--out", str(tmp_path / "b"), "--cases", "1", "--workers", "1", "--seed", "2"]) == 0
    assert _tree(tmp_path / "a") != _tree(tmp_path / "b")
    blocker = tmp_path / "a" / "volume-0.nii"
    capsys.readouterr()
    assert main(["synth", "cardiac", "--out", str(blocker), "--cases", "1"]) == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and "not a folder" in err
    assert main(["synth", "cardiac", "--out", str(tmp_path / "c"), "--cases", "0"]) == 2
    capsys.readouterr()
    assert main(["synth", "liver", "--out", str(blocker / "sub"), "--cases", "1"]) == 2
    assert "cannot create --out" in capsys.readouterr().err


def test_synth_cli_removes_parts_left_by_a_killed_run(tmp_path):
    stale = tmp_path / ".volume-0.nii.12345.part"
    stale.write_bytes(b"half a file")
    assert main(["synth", "liver", "--out", str(tmp_path), "--cases", "1", "--workers", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["action-ray-recipe.txt", "action-ray-synth.json",
                                                          "segmentation-0.nii", "volume-0.nii"]


def test_bench_phantoms_prints_measurements_next_to_targets(capsys):
    assert main(["bench", "phantoms", "--cases", "1", "--size", "32"]) == 0
    out = capsys.readouterr().out
    for row in ("CPU-s / volume", "fraction RV", "fraction MYO", "fraction LV", "fraction tumour", "slices / volume"):
        line = next(line for line in out.splitlines() if line.startswith(row))
        assert len(line.split("  ")) >= 3, line  # quantity, measured, target
    assert "0.0093" in out and "48" in out  # the docs/phantoms.md targets are shown


def test_synth_refuses_to_resume_a_folder_made_with_another_seed_size_or_kind(tmp_path, capsys):
    out = tmp_path / "liver"
    assert main(["synth", "liver", "--out", str(out), "--cases", "1", "--workers", "1", "--seed", "3"]) == 0
    before = _tree(out)
    for argv in (["liver", "--seed", "4"], ["liver", "--seed", "3", "--size", "256"], ["cardiac", "--seed", "3"]):
        capsys.readouterr()
        assert main(["synth", *argv, "--out", str(out), "--cases", "2", "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and "synth liver --seed 3 --size 128" in err, err
        assert _tree(out) == before  # nothing written, the recipe hint untouched
    assert (out / "action-ray-recipe.txt").read_text() == "phantom-liver\n"
