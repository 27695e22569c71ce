"""Patient-level splits: deterministic, 70/10/20, frames of a patient together, unlabelled -> train."""

from __future__ import annotations

import pytest

from action_ray.errors import ActionRayError
from action_ray.ingest.layouts import SourceCase
from action_ray.ingest.splits import assign_splits, seed_split


def acdc_like(n_patients: int, unlabelled: tuple[int, ...] = ()) -> list[SourceCase]:
    cases = []
    for p in range(1, n_patients + 1):
        pid = f"patient{p:03d}"
        for frame in (1, 12):
            label = None if p in unlabelled else f"{pid}_frame{frame:02d}_gt.nii.gz"
            cases.append(SourceCase(f"{pid}_frame{frame:02d}", pid, "x.nii.gz", label))
    return cases


def test_seed_split_is_70_10_20_deterministic_and_order_independent():
    ids = [f"p{i:03d}" for i in range(100)]
    first = seed_split(ids, seed=0)
    assert first == seed_split(list(reversed(ids)), seed=0)
    counts = {s: list(first.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}
    assert first != seed_split(ids, seed=1)


def test_both_frames_of_a_patient_share_the_split():
    splits, _ = assign_splits(acdc_like(20), seed=3)
    assert set(splits) == {f"patient{p:03d}" for p in range(1, 21)}
    assert sorted(splits.values()).count("train") == 14


def test_unlabelled_only_patients_go_to_train_and_are_noted():
    splits, notes = assign_splits(acdc_like(10, unlabelled=(9, 10)), seed=0)
    assert splits["patient009"] == splits["patient010"] == "train"
    assert any("unlabelled-only" in n for n in notes)
    labelled = [splits[f"patient{p:03d}"] for p in range(1, 9)]
    assert sorted(labelled) == sorted(seed_split([f"patient{p:03d}" for p in range(1, 9)], 0).values())


def test_split_file_wins_and_unlisted_patients_use_the_seed_rule():
    file_map = {"patient001": "test", "patient002": "val"}
    splits, notes = assign_splits(acdc_like(12), seed=0, split_file=file_map)
    assert splits["patient001"] == "test" and splits["patient002"] == "val"
    rest = {f"patient{p:03d}" for p in range(3, 13)}
    assert {p: splits[p] for p in rest} == seed_split(rest, 0)
    assert any("not in the split file" in n for n in notes)


def test_layout_split_conflict_within_a_patient_is_an_error():
    cases = [SourceCase("a", "P1", "a.nii", "a_l.nii", split="train"),
             SourceCase("b", "P1", "b.nii", "b_l.nii", split="test")]
    with pytest.raises(ActionRayError, match="P1"):
        assign_splits(cases)


def test_layout_given_split_is_kept_and_others_use_the_seed_rule():
    cases = [SourceCase("a", "P0", "a.nii", "a_l.nii", split="val"), SourceCase("b", "P0", "b.nii", "b_l.nii", split="val")]
    cases += [SourceCase(f"c{i}", f"Q{i}", "c.nii", "c_l.nii") for i in range(10)]
    splits, _ = assign_splits(cases, seed=4)
    assert splits["P0"] == "val"
    assert {f"Q{i}": splits[f"Q{i}"] for i in range(10)} == seed_split([f"Q{i}" for i in range(10)], 4)
