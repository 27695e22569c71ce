"""The phantom path users run first: synth -> ingest -> info, through the CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from action_ray.cli import main
from action_ray.store import open_store


def test_cardiac_phantoms_ingest_with_their_own_recipe_and_round_trip(tmp_path, capsys):
    raw, store_url = tmp_path / "raw", str(tmp_path / "store.zarr")
    assert main(["synth", "cardiac", "--out", str(raw), "--cases", "10", "--workers", "1"]) == 0
    assert (raw / "action-ray-recipe.txt").read_text().strip() == "phantom-cardiac"
    assert main(["ingest", str(raw), store_url, "--layout", "acdc", "--workers", "2", "--no-progress"]) == 0

    store = open_store(store_url)
    assert store.dataset_meta["name"] == "phantom-cardiac"
    assert store.dataset_meta["normalisation"] == {"method": "percentile"}  # today's vocabulary only
    from action_ray.io.normalise import resolve_spec

    assert resolve_spec(store.dataset_meta).method == "percentile"
    cases = store.list_cases()
    assert len(cases) == 20
    # 70/10/20 by patient (seeded), both frames of a patient in the same split
    patients = {c.patient_id: c.split for c in cases}
    assert sorted(patients.values()).count("train") == 7
    assert sorted(patients.values()).count("val") == 1
    assert sorted(patients.values()).count("test") == 2
    assert all(patients[c.patient_id] == c.split for c in cases)

    # exact round trip of one frame against the NIfTI, spacing in (z, y, x) order
    case = store.case("patient003_frame01")
    img = nib.load(raw / "training" / "patient003" / "patient003_frame01.nii.gz")
    gt = nib.load(raw / "training" / "patient003" / "patient003_frame01_gt.nii.gz")
    data, labels = np.asarray(img.dataobj), np.asarray(gt.dataobj)
    z = data.shape[2] // 2
    image_slice, label_slice = store.read_slice(case.case_id, z)
    np.testing.assert_array_equal(image_slice, data[:, :, z].T.astype(np.float32))
    np.testing.assert_array_equal(label_slice, labels[:, :, z].T)
    sx, sy, sz = img.header.get_zooms()[:3]
    np.testing.assert_allclose(case.spacing, (sz, sy, sx), rtol=1e-6)

    capsys.readouterr()
    assert main(["info", store_url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {c["id"] for c in summary["cases"]} == {c.case_id for c in cases}
    assert all({"id", "patient", "split", "has_label", "shape", "spacing"} <= set(c) for c in summary["cases"])

    # a second ingest is a no-op
    assert main(["ingest", str(raw), store_url, "--layout", "acdc", "--no-progress"]) == 0
    assert "20 cases already complete" in capsys.readouterr().out
