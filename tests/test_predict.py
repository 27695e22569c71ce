"""`action-ray predict`: NIfTI out on the input's grid (affine, spacing, axis order), probabilities.

Architecture contract 1 (spacing survives NIfTI → store → prediction NIfTI) is checked on the
real ingest reader (`ingest.validate.load_case`) and store writer. Axis order is checked
exactly with a stub network whose logits are the thresholded input, so the label map must be
the input's bright voxels, in place.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from action_ray.errors import ConfigError
from action_ray.evaluation import predict_cases
from action_ray.evaluation.inference import InferenceSettings
from action_ray.evaluation.predict import nifti_volumes, predict_volumes, store_volumes
from action_ray.io.normalise import NormalisationSpec
from action_ray.store import CaseMeta, create_store
from test_evaluate import CLASSES, save_run, tiny_config  # tests/ is on sys.path

#: NIfTI (x, y, z) voxel sizes and an oblique-free but shifted, flipped affine.
ZOOMS = (1.25, 0.8, 7.5)
AFFINE = np.array([[-1.25, 0.0, 0.0, 40.0], [0.0, 0.8, 0.0, -12.5], [0.0, 0.0, 7.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
NIFTI_SHAPE = (16, 16, 5)  # (x, y, z): square slices so a 16-pixel training size needs no resize


def asymmetric_scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) in NIfTI (x, y, z) order: an L-shaped bright region that no flip or
    transpose maps onto itself, intensity 300 inside, ~0 outside."""
    rng = np.random.default_rng(seed)
    label = np.zeros(NIFTI_SHAPE, dtype=np.uint8)
    label[2:11, 3:6, 1:4] = 1
    label[2:5, 6:13, 1:4] = 1
    label[9, 12, 4] = 1
    image = (300.0 * label + rng.normal(0.0, 3.0, NIFTI_SHAPE)).astype(np.float32)
    return image, label


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


@pytest.fixture(scope="module")
def scan_store(tmp_path_factory):
    """A source NIfTI pair, the store it was ingested into (real ingest reader), and a run."""
    from action_ray.ingest.validate import load_case
    from action_ray.urls import filesystem_for

    root = tmp_path_factory.mktemp("predict")
    image, label = asymmetric_scan()
    image_path = write_nifti(root / "scan.nii.gz", image)
    label_path = write_nifti(root / "scan_label.nii.gz", label)
    fs, _ = filesystem_for(str(root))
    loaded = load_case(fs, str(image_path), str(label_path), CLASSES)
    store = create_store(str(root / "store.zarr"), name="scan", modality="MR", layout="folder", classes=CLASSES)
    store.write_case(CaseMeta("scan", "p1", "test", loaded.spacing, loaded.affine, {"image": str(image_path)}),
                     loaded.image, loaded.label)
    run_dir = root / "run"
    save_run(run_dir, tiny_config(store.url, **{"data.slice_size": "16", "model.cut_size": "8",
                                                "model.cut_stride": "4", "model.local_pooling": "2"}))
    return image_path, store, run_dir


class Threshold(torch.nn.Module):
    """Two-class logits (x < 150, x >= 150): the label map is exactly the bright voxels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([150.0 - x, x - 150.0], dim=1)


def _load(path) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(Path(path).read_bytes()))


def test_store_and_nifti_predictions_land_on_the_input_grid(scan_store, tmp_path):
    image_path, store, _ = scan_store
    _, label = asymmetric_scan()
    settings = InferenceSettings(dims=2, normalisation=NormalisationSpec("none"), slice_size=16, batch_size=2)
    np.testing.assert_allclose(store.spacing("scan"), ZOOMS[::-1], rtol=1e-6)  # (sz, sy, sx) in the store
    for name, volumes in (("store", store_volumes(store, ["scan"])),
                          ("nifti", nifti_volumes([str(image_path)], None))):
        written = predict_volumes(Threshold(), volumes, settings, str(tmp_path / name), probabilities=True,
                                  progress=False)
        seg, prob = _load(written[0]), _load(written[1])
        assert seg.get_data_dtype() == np.uint8 and seg.shape == NIFTI_SHAPE
        np.testing.assert_array_equal(np.asanyarray(seg.dataobj), label, err_msg=name)  # exact, in place
        np.testing.assert_allclose(seg.affine, AFFINE)
        np.testing.assert_allclose(seg.header.get_zooms(), ZOOMS)
        assert int(seg.header["sform_code"]) == 1 and seg.header.get_xyzt_units()[0] == "mm"
        probabilities = np.asanyarray(prob.dataobj)
        assert prob.get_data_dtype() == np.float32 and probabilities.shape == (*NIFTI_SHAPE, 2)
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(probabilities.argmax(axis=-1), label)
        np.testing.assert_allclose(prob.affine, AFFINE)


def test_predict_from_a_run_keeps_affine_and_spacing(scan_store, tmp_path):
    """Contract 1 with the real student: NIfTI -> store -> prediction NIfTI keeps the grid."""
    from action_ray.cli import main

    image_path, store, run_dir = scan_store
    out = tmp_path / "cli"
    assert main(["predict", str(run_dir), "--store", store.url, "--cases", "scan", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["predict", str(run_dir / "stages" / "ft"), str(image_path), "--out", str(out / "files"),
                 "--probabilities", "--no-progress"]) == 0
    source = nib.load(str(image_path))
    from_store, from_file = _load(out / "scan_seg.nii.gz"), _load(out / "files" / "scan_seg.nii.gz")
    for seg in (from_store, from_file):
        assert seg.shape == source.shape and seg.get_data_dtype() == np.uint8
        np.testing.assert_allclose(seg.affine, source.affine)
        np.testing.assert_allclose(seg.header.get_zooms(), source.header.get_zooms())
        assert set(np.unique(np.asanyarray(seg.dataobj))) <= set(CLASSES)
    # the stored statistics and the ones computed from the file normalise identically
    np.testing.assert_array_equal(np.asanyarray(from_store.dataobj), np.asanyarray(from_file.dataobj))
    assert _load(out / "files" / "scan_prob.nii.gz").shape == (*NIFTI_SHAPE, 4)


def test_predict_takes_the_normalisation_flag_in_both_spellings():
    import argparse

    from action_ray.commands import predict as predict_command

    parser = argparse.ArgumentParser()
    predict_command.configure(parser)
    for flag in ("--normalisation", "--normalization"):  # the second: users' scripts from before
        assert parser.parse_args(["run", "--out", "o", flag, "zscore"]).normalisation == "zscore"


def test_predict_argument_errors(scan_store, tmp_path):
    image_path, store, run_dir = scan_store
    with pytest.raises(ConfigError, match="either --store"):
        predict_cases(str(run_dir), str(tmp_path), store_url=store.url, niftis=[str(image_path)])
    with pytest.raises(ConfigError, match="need --store"):
        predict_cases(str(run_dir), str(tmp_path), niftis=[str(image_path)], cases=["scan"])
    with pytest.raises(Exception, match="no case 'nope'"):
        predict_cases(str(run_dir), str(tmp_path), store_url=store.url, cases=["nope"], progress=False)


def test_predict_reads_a_checkpoint_from_s3_and_writes_there(scan_store, s3_server):
    from action_ray.runs.checkpoint import upload_directory
    from action_ray.urls import filesystem_for

    image_path, store, run_dir = scan_store
    options = s3_server.storage_options
    bucket = s3_server.new_bucket("predict")
    run_url = f"s3://{bucket}/runs/r1"
    upload_directory(str(run_dir / "stages" / "ft"), f"{run_url}/stages/ft", options)
    fs, _ = filesystem_for(run_url, options)
    fs.put_file(str(run_dir / "config.yaml"), f"{bucket}/runs/r1/config.yaml")
    written = predict_cases(run_url, f"s3://{bucket}/preds", store_url=store.url, storage_options=options,
                            progress=False)
    assert written == [f"s3://{bucket}/preds/scan_seg.nii.gz"]
    seg = nib.Nifti1Image.from_bytes(gzip.decompress(fs.cat_file(f"{bucket}/preds/scan_seg.nii.gz")))
    np.testing.assert_allclose(seg.affine, nib.load(str(image_path)).affine)
