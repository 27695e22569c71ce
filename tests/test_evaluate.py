"""`action-ray evaluate`: checkpoint choice, inference on the training data path, reports.

A tiny store (a few 4 x 24 x 20 cases, spacing (6, 1.5, 1.25) mm) and a tiny untrained run
(the cpu-preset student saved with the checkpoint module) keep every test to seconds; stub
networks with known outputs make the inference checks exact.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from action_ray.runs.files import write_file
from action_ray.config import load_config
from action_ray.errors import ConfigError, StoreError
from action_ray.evaluation import evaluate_run
from action_ray.evaluation.evaluate import score_cases
from action_ray.evaluation.inference import (
    InferenceSettings,
    predict_case,
    predict_sliding_window,
    predict_slices,
)
from action_ray.evaluation.report import CSV_COLUMNS, build_summary, case_rows, write_reports
from action_ray.evaluation.inference import inference_settings
from action_ray.io.normalise import NormalisationSpec
from action_ray.metrics import case_metrics
from action_ray.runs.resolve import load_student, resolve_checkpoint
from action_ray.store import CaseMeta, create_store

CLASSES = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
SHAPE = (4, 24, 20)  # (Z, Y, X)
SPACING = (6.0, 1.5, 1.25)


def phantom(seed: int, shape=SHAPE, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Nested boxes of classes 1..classes-1 (image intensity 100 * class + noise), off-centre."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    z, y, x = shape
    for c in range(1, classes):
        label[1:z - 1, 2 + 2 * c:y - 2 - c, 3 + c:x - 2 - 2 * c] = c
    image = (100.0 * label + rng.normal(0.0, 5.0, size=shape)).astype(np.float32)
    return image, label


def make_store(root: Path, cases: dict[str, tuple[str, np.ndarray, np.ndarray | None]]):
    """A local store with ``{case_id: (split, image, label or None)}``."""
    store = create_store(str(root), name="tiny", modality="MR", layout="folder", classes=CLASSES)
    for case_id, (split, image, label) in cases.items():
        affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
        store.write_case(CaseMeta(case_id, f"p-{case_id}", split, SPACING, affine.tolist(), {"image": case_id}),
                         image, label)
    return store


def tiny_config(store_url: str, **overrides: str):
    pairs = [f"data.store={store_url}", "data.slice_size=32", *(f"{k}={v}" for k, v in overrides.items())]
    return load_config("cpu-demo", pairs)


def save_run(run_dir: Path, config, subdir: str = "stages/ft", num_classes: int = 4, step: int = 7) -> Path:
    """A run directory with an untrained FT checkpoint written by the checkpoint module."""
    from action_ray.runs.checkpoint import Checkpoint, DataPosition, capture_rng, save_checkpoint
    from action_ray.train.state import build_state

    state = build_state(config, num_classes, "cpu", "ft", rank=0)
    checkpoint = Checkpoint(stage="ft", step=step, train_state=state.state_dict(), rank_rng=[capture_rng()],
                            data_position=DataPosition(), config=config.to_dict(), label_split="{}",
                            stage_done=True)
    save_checkpoint(str(run_dir / subdir), checkpoint)
    write_file(str(run_dir / "config.yaml"), config.to_yaml())
    return run_dir / subdir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(store, run_dir): 3 labelled test cases, 1 unlabelled test case, 1 val case."""
    root = tmp_path_factory.mktemp("eval")
    cases = {f"t{i}": ("test", *phantom(i)) for i in range(3)}
    image, label = phantom(10)
    label[label == 3] = 2  # a case without class 3 in its ground truth
    cases["t-nolv"] = ("test", image, label)
    cases["t-unlabelled"] = ("test", phantom(11)[0], None)
    cases["v0"] = ("val", *phantom(20))
    store = make_store(root / "store.zarr", cases)
    config = tiny_config(store.url)
    run_dir = root / "run"
    save_run(run_dir, config)
    return store, run_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _float(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


# ------------------------------------------------------------------------------ end to end
def test_evaluate_writes_reports_matching_recomputed_metrics(tiny, tmp_path):
    store, run_dir = tiny
    out = tmp_path / "out"
    summary = evaluate_run(run_dir, store.url, out_dir=out, progress=False)

    for name in ("metrics.csv", "summary.json", "summary.md", "overlays.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "overlays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(out / "metrics.csv")
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    scored = ["t-nolv", "t0", "t1", "t2"]
    assert len(rows) == len(scored) * 3  # labelled test cases x foreground classes
    assert sorted({r["case"] for r in rows}) == scored
    assert summary["skipped_unlabelled"] == ["t-unlabelled"]
    assert summary["n_cases"] == 4 and summary["split"] == "test" and summary["stage"] == "ft"
    assert json.loads((out / "summary.json").read_text())["per_class"]["2"]["name"] == "MYO"
    assert "| **mean** |" in (out / "summary.md").read_text()
    assert "training curves" not in (out / "summary.md").read_text()  # this run has none

    # the same student, the same settings: recompute every row with case_metrics
    student = load_student(resolve_checkpoint(str(run_dir)))
    settings = inference_settings(student.config, store.dataset_meta)
    assert settings.slice_size == 32 and settings.image_interpolation == "bicubic"
    for case_id in scored:
        info = store.case(case_id)
        image, gt = store.read_volume(case_id)
        pred = predict_case(student.network, image, info.stats, settings).labels
        expected = case_metrics(pred, gt, [1, 2, 3], spacing=SPACING)
        got = [r for r in rows if r["case"] == case_id]
        for want, row in zip(expected, got):
            assert int(row["class"]) == want["class"] and row["patient"] == f"p-{case_id}"
            assert row["class_name"] == CLASSES[want["class"]]
            for key in ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
                np.testing.assert_allclose(_float(row[key]), want[key], rtol=1e-9, equal_nan=True, err_msg=key)
            assert int(row["gt_empty"]) == want["gt_empty"] and int(row["pred_voxels"]) == want["pred_voxels"]
    lv_missing = [r for r in rows if r["case"] == "t-nolv" and r["class"] == "3"][0]
    assert lv_missing["gt_empty"] == "1"


def test_evaluate_cli_best_checkpoint_and_errors(tiny, tmp_path, capsys):
    from action_ray.cli import main

    store, run_dir = tiny
    out = tmp_path / "cli"
    # no best checkpoint kept -> a one-line error naming what to do
    assert main(["evaluate", str(run_dir), "--store", store.url, "--checkpoint", "best", "--out", str(out)]) == 2
    assert "no best-on-validation checkpoint" in capsys.readouterr().err
    # a split without cases -> a one-line error naming it
    assert main(["evaluate", str(run_dir), "--store", store.url, "--split", "train", "--out", str(out)]) == 2
    assert "no complete case in split 'train'" in capsys.readouterr().err
    best = tmp_path / "run-with-best"
    config = tiny_config(store.url)
    save_run(best, config)
    save_run(best, config, subdir="best", step=3)
    code = main(["evaluate", str(best), "--store", store.url, "--checkpoint", "best", "--split", "val",
                 "--empty", "action", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3 and summary["checkpoint"].endswith("best") and summary["empty"] == "action"
    assert summary["split"] == "val" and summary["n_cases"] == 1
    assert "Evaluation: val split" in capsys.readouterr().out
    assert resolve_checkpoint(str(best), "last").endswith("stages/ft")
    assert resolve_checkpoint(str(run_dir), str(run_dir / "stages" / "ft")) == str(run_dir / "stages" / "ft")
    with pytest.raises(ConfigError, match="no run or checkpoint"):
        resolve_checkpoint(str(tmp_path / "missing"))


# --------------------------------------------------------------------- exact stub networks
class LabelFromIntensity(torch.nn.Module):
    """Logits that make argmax = round(x / 100): exact on the phantom's intensities."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.register_buffer("centres", torch.arange(num_classes, dtype=torch.float32) * 100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return -((x - self.centres.view(shape)) ** 2) / 100.0


def test_perfect_prediction_scores_one_through_the_reporting_path(tiny, tmp_path):
    store, _ = tiny
    cases = [store.case(c) for c in ("t0", "t1", "t-unlabelled")]
    # a 3-D window of a pointwise stub is exact (no resize), so the prediction is the ground truth
    settings = InferenceSettings(dims=3, normalisation=NormalisationSpec("none"), window=(4, 16, 16), stride=(2, 8, 8))
    classes = {1: "RV", 2: "MYO", 3: "LV"}
    scored = score_cases(LabelFromIntensity(), store, cases, settings, classes, progress=False)
    assert scored.skipped_unlabelled == ["t-unlabelled"]
    assert [r["dice"] for r in scored.rows] == [1.0] * 6
    assert all(r["hd95_mm"] == 0.0 and r["asd_vox"] == 0.0 for r in scored.rows)
    summary = build_summary(scored.rows, classes, {"split": "test"})
    write_reports(str(tmp_path), scored.rows, summary)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [float(r["dice"]) for r in rows] == [1.0] * 6
    assert summary["overall"]["dice"] == 1.0 and summary["overall"]["pooled_dice"] == 1.0
    assert len(scored.montage) == 2


def test_empty_mask_conventions_reach_the_csv(tmp_path):
    gt = np.zeros((3, 8, 8), dtype=np.uint8)
    gt[1, 2:5, 2:5] = 1
    pred = np.zeros_like(gt)
    pred[1, 2:5, 2:6] = 1
    pred[0, 0, 0] = 2  # class 2: false alarm in a case without it; class 3: absent in both
    classes = {1: "a", 2: "b", 3: "c"}
    for empty, expected in (("strict", {"2": ("0.0", ""), "3": ("1.0", "0.0")}),
                            ("action", {"2": ("1.0", "0.0"), "3": ("0.0", "0.0")})):
        rows = case_rows("c1", "p1", pred, gt, classes, (2.0, 1.0, 1.0), empty)
        out = tmp_path / empty
        write_reports(str(out), rows, build_summary(rows, classes, {"empty": empty}))
        by_class = {r["class"]: r for r in read_csv(out / "metrics.csv")}
        for c, (dice, hd95) in expected.items():
            assert (by_class[c]["dice"], by_class[c]["hd95_mm"]) == (dice, hd95), (empty, c)
        assert by_class["2"]["gt_empty"] == "1" and by_class["2"]["pred_empty"] == "0"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["empty"] == empty
        if empty == "strict":  # the undefined distance is excluded and counted, never NaN in JSON
            assert summary["per_class"]["2"]["hd95_mm"] is None
            assert summary["per_class"]["2"]["excluded"]["hd95_mm"] == 1


def test_slicewise_inference_resizes_probabilities_back_to_the_native_grid():
    image, label = phantom(3)
    # a network that only sees what it is given: on the training grid it is exact
    exact = predict_slices(LabelFromIntensity(), image, (24, 20), batch_size=3).labels
    np.testing.assert_array_equal(exact, label)
    resized = predict_slices(LabelFromIntensity(), image, 32, batch_size=3, keep_probabilities=True)
    assert resized.labels.shape == label.shape and resized.probabilities.shape == (4, *label.shape)
    np.testing.assert_allclose(resized.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert (resized.labels == label).mean() > 0.95  # only box borders may move by the round trip


def test_sliding_window_equals_whole_volume_for_a_translation_equivariant_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 1), torch.nn.Tanh(), torch.nn.Conv3d(6, 3, 1)).eval()
    volume = np.random.default_rng(0).normal(size=(5, 21, 13)).astype(np.float32)
    windowed = predict_sliding_window(model, volume, window=(8, 8, 8), stride=(4, 3, 5), batch_size=5,
                                      keep_probabilities=True)
    with torch.no_grad():
        whole = torch.softmax(model(torch.from_numpy(volume)[None, None]), dim=1)[0].numpy()
    np.testing.assert_allclose(windowed.probabilities, whole, atol=1e-6)
    np.testing.assert_array_equal(windowed.labels, whole.argmax(axis=0))


def test_sliding_window_pads_centred_and_counts_every_window():
    seen: list[tuple[int, ...]] = []

    def first_window_marks(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        # class 1 wins only where the input is non-zero: padding must not shift the volume
        return torch.cat([torch.zeros_like(x), x], dim=1)

    volume = np.zeros((3, 10, 10), dtype=np.float32)
    volume[1, 2, 7] = 1.0  # one asymmetric voxel
    result = predict_sliding_window(first_window_marks, volume, window=(8, 8, 8), stride=(8, 2, 2))
    assert all(shape[2:] == (8, 8, 8) for shape in seen)
    assert np.argwhere(result.labels).tolist() == [[1, 2, 7]]


def test_3d_run_evaluates_with_the_configured_sliding_window(tiny, tmp_path):
    """A 3-D run: window and stride come from eval.window / eval.stride (store axis order)."""
    store, _ = tiny
    config = load_config("la-3d", [f"data.store={store.url}", "model.preset=cpu", "data.patch_size=[16,16,16]",
                                   "eval.window=[16,16,16]", "eval.stride=[8,8,8]", "model.cut_size=8",
                                   "model.cut_stride=4", "model.local_pooling=2", "train.use_gpu=false"])
    run_dir = tmp_path / "run3d"
    save_run(run_dir, config)
    student = load_student(resolve_checkpoint(str(run_dir)))
    settings = inference_settings(student.config, store.dataset_meta, batch_size=2)
    assert student.network.dims == 3
    assert (settings.dims, settings.window, settings.stride, settings.batch_size) == (3, (16, 16, 16), (8, 8, 8), 2)
    summary = evaluate_run(run_dir, store.url, split="val", out_dir=tmp_path / "out3d", batch_size=2, progress=False)
    assert summary["inference"]["window"] == [16, 16, 16] and summary["n_cases"] == 1
    info = store.case("v0")
    image, gt = store.read_volume("v0")
    pred = predict_case(student.network, image, info.stats, settings).labels
    want = case_metrics(pred, gt, [1, 2, 3], spacing=SPACING)
    rows = read_csv(tmp_path / "out3d" / "metrics.csv")
    np.testing.assert_allclose([float(r["dice"]) for r in rows], [w["dice"] for w in want])


def test_last_falls_back_to_the_newest_periodic_checkpoint_of_the_last_stage(tmp_path, caplog):
    """An unfinished run: no stages/ft yet, so `last` is the highest-step Ray checkpoint of FT."""
    from action_ray.evaluation.evaluate import foreground_classes

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("stages: [p2, ft]\n")
    for name, stage, step in (("checkpoint_000000", "p2", 90), ("checkpoint_000001", "ft", 20),
                              ("checkpoint_000002", "ft", 40), ("checkpoint_000003", "ft", 30)):
        (run / name).mkdir()
        (run / name / "meta.json").write_text(json.dumps({"stage": stage, "step": step}))
    with caplog.at_level("WARNING"):
        assert resolve_checkpoint(str(run)) == str(run / "checkpoint_000002")
    assert "no final ft checkpoint" in caplog.text
    (run / "config.yaml").write_text("stages: [p1, p2]\n")
    assert resolve_checkpoint(str(run)) == str(run / "checkpoint_000000")
    (run / "config.yaml").write_text("stages: [p1]\n")
    with pytest.raises(ConfigError, match="no p1 checkpoint"):
        resolve_checkpoint(str(run))
    with pytest.raises(ConfigError, match="network predicts 3 classes"):
        foreground_classes(CLASSES, 3)


def test_a_deleted_or_corrupt_chunk_leaves_its_case_out_by_id_and_the_rest_is_scored(tmp_path, capsys):
    """After ingest, one case loses its image shard (it would read back as zeros) and another has
    a slice overwritten with garbage: evaluate names both, scores the other cases, and exits 3."""
    from action_ray.cli import main
    from action_ray.store import open_store

    cases = {f"t{i}": ("test", *phantom(i)) for i in range(3)}
    store = make_store(tmp_path / "store.zarr", cases)
    run_dir = tmp_path / "run"
    save_run(run_dir, tiny_config(store.url))
    from tests.damage import corrupt_slice, delete_shard

    for case_id in ("t0", "t1"):  # one shard per array holds every slice: zarr counts all of them
        assert store.case(case_id).stored_chunks == {"image": SHAPE[0], "label": SHAPE[0]}
    delete_shard(tmp_path / "store.zarr", "t0")
    corrupt_slice(tmp_path / "store.zarr", "t1", 2)
    reopened = open_store(store.url)
    with pytest.raises(StoreError, match="'t0'.*0 stored chunks where ingest wrote 4"):
        reopened.verify_case("t0")
    reopened.verify_case("t2")

    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--store", store.url, "--out", str(out), "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert "2 case(s) could not be read" in captured.out and "t0, t1" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 1 and [u["case_id"] for u in summary["unreadable_cases"]] == ["t0", "t1"]
    assert {row["case"] for row in read_csv(out / "metrics.csv")} == {"t2"}
    assert "left out, unreadable" in (out / "summary.md").read_text()


def test_the_report_links_the_runs_training_curves(tiny, tmp_path):
    store, run_dir = tiny
    curves = Path(run_dir) / "curves.png"
    curves.write_bytes(b"\x89PNG\r\n\x1a\n")
    try:
        summary = evaluate_run(run_dir, store.url, out_dir=tmp_path / "out", progress=False)
    finally:
        curves.unlink()
    assert summary["training_curves"] == str(curves)
    assert f"- training curves: `{curves}`" in (tmp_path / "out" / "summary.md").read_text()
