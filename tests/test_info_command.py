"""`action-ray info` on a local store: table and --json summaries computed from what was written."""

from __future__ import annotations

import json

import numpy as np

from action_ray.cli import main
from action_ray.store import CaseMeta, create_store


def make_store(path):
    store = create_store(str(path), name="mini", modality="MR", layout="acdc",
                         classes={0: "background", 1: "RV", 2: "LV"})
    rng = np.random.default_rng(0)
    specs = [  # id, patient, split, shape, spacing, labelled
        ("p1_ed", "p1", "train", (4, 10, 12), (10.0, 1.5, 1.5), True),
        ("p1_es", "p1", "train", (4, 10, 12), (10.0, 1.5, 1.5), False),
        ("p2_ed", "p2", "train", (6, 16, 12), (5.0, 1.0, 1.25), False),
        ("p3_ed", "p3", "val", (8, 12, 14), (8.0, 1.25, 1.25), True),
    ]
    labels = {}
    for case_id, patient, split, shape, spacing, labelled in specs:
        label = rng.integers(0, 3, size=shape).astype(np.uint8) if labelled else None
        labels[case_id] = label
        store.write_case(CaseMeta(case_id, patient, split, spacing, np.eye(4).tolist(),
                                  {"image": f"{case_id}.nii.gz"}, {"phase": case_id[-2:]}),
                         rng.normal(size=shape).astype(np.float32), label)
    return store, labels


def test_info_json(tmp_path, capsys):
    store, labels = make_store(tmp_path / "s.zarr")
    assert main(["info", store.url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_cases"] == 4 and summary["n_patients"] == 3
    assert summary["n_labelled"] == 2 and summary["n_unlabelled"] == 2
    assert summary["splits"] == {"train": {"cases": 3, "labelled": 1, "unlabelled": 2},
                                 "val": {"cases": 1, "labelled": 1, "unlabelled": 0}}
    assert summary["spacing_mm"]["z"] == {"min": 5.0, "median": 9.0, "max": 10.0}
    assert summary["shape"]["y"] == {"min": 10.0, "median": 11.0, "max": 16.0}
    first = summary["cases"][0]
    assert first == {"id": "p1_ed", "patient": "p1", "split": "train", "has_label": True,
                     "shape": [4, 10, 12], "spacing": [10.0, 1.5, 1.5],
                     "label_counts": first["label_counts"], "extra": {"phase": "ed"}}
    all_labels = np.concatenate([l.ravel() for l in labels.values() if l is not None])
    for cls, name in ((0, "background"), (1, "RV"), (2, "LV")):
        assert abs(summary["class_voxel_fractions"][name] - np.mean(all_labels == cls)) < 1e-12
    assert summary["incomplete_cases"] == []


def test_info_table_reports_leftovers(tmp_path, capsys):
    store, _ = make_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "cases" / "p9_ed" / "image").mkdir(parents=True)
    assert main(["info", store.url]) == 0
    out = capsys.readouterr().out
    assert "cases     4 (2 labelled, 2 unlabelled) from 3 patients" in out
    assert "train       3 cases      1 labelled      2 unlabelled" in out
    assert "z: 5 / 9 / 10" in out
    assert "incomplete 1" in out and "p9_ed" in out


def test_info_missing_store_is_one_line_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.zarr" in err and "no store here" in err


def test_info_into_a_pipe_closed_early_is_quiet(tmp_path):
    """`action-ray info STORE --json | head -c 10`: no BrokenPipeError traceback, exit 0."""
    import subprocess
    import sys

    store, _ = make_store(tmp_path / "s.zarr")
    proc = subprocess.Popen([sys.executable, "-m", "action_ray.cli", "info", store.url, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes (it is still importing)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err
