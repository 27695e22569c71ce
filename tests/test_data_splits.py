"""Label-ratio splits: patient level, deterministic, nested across ratios, recorded as JSON."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from action_ray.data.splits import LabelSplit, num_labelled_for_ratio, split_cases
from action_ray.errors import ConfigError


@dataclass(frozen=True)
class Case:
    case_id: str
    patient_id: str
    split: str
    has_label: bool


def acdc_like(num_train: int = 70, unlabelled_patients: frozenset = frozenset()) -> list[Case]:
    """Two frames per patient (ED, ES), plus val/test patients the split must ignore."""
    cases = []
    for p in range(num_train + 30):
        split = "train" if p < num_train else ("val" if p < num_train + 10 else "test")
        pid = f"patient{p:03d}"
        for frame in ("ED", "ES"):
            cases.append(Case(f"{pid}_{frame}", pid, split, pid not in unlabelled_patients))
    return cases


def test_ratio_counts_follow_the_paper_table():
    assert num_labelled_for_ratio(0.05, 70) == 3
    assert num_labelled_for_ratio(0.10, 70) == 7
    assert num_labelled_for_ratio(0.001, 70) == 1  # at least one patient
    with pytest.raises(ConfigError):
        num_labelled_for_ratio(0.0, 70)


def test_split_is_patient_level_and_covers_train_only():
    cases = acdc_like()
    split = split_cases(cases, label_ratio=0.1, seed=3)
    assert split.num_labelled_patients == 7 and len(split.labelled_patients) == 7
    assert not set(split.labelled_patients) & set(split.unlabelled_patients)
    patient_of = {c.case_id: c.patient_id for c in cases}
    labelled_pids = {patient_of[c] for c in split.labelled_cases}
    unlabelled_pids = {patient_of[c] for c in split.unlabelled_cases}
    assert labelled_pids == set(split.labelled_patients)
    assert not labelled_pids & unlabelled_pids
    # both frames of a labelled patient are labelled; every train case is in exactly one stream
    assert len(split.labelled_cases) == 14
    train_ids = {c.case_id for c in cases if c.split == "train"}
    assert set(split.labelled_cases) | set(split.unlabelled_cases) == train_ids
    assert not set(split.labelled_cases) & set(split.unlabelled_cases)


def test_split_is_deterministic_and_seed_dependent():
    cases = acdc_like()
    a = split_cases(cases, label_ratio=0.05, seed=1)
    b = split_cases(list(reversed(cases)), label_ratio=0.05, seed=1)  # listing order is irrelevant
    assert a == b
    others = {split_cases(cases, label_ratio=0.05, seed=s).labelled_patients for s in range(2, 8)}
    assert len(others | {a.labelled_patients}) > 1


def test_ratios_are_nested_for_one_seed():
    cases = acdc_like()
    previous: set[str] = set()
    for ratio in (0.014, 0.05, 0.1, 0.2, 0.5, 1.0):
        labelled = set(split_cases(cases, label_ratio=ratio, seed=11).labelled_patients)
        assert previous <= labelled
        previous = labelled
    by_count = set(split_cases(cases, num_labelled_patients=3, seed=11).labelled_patients)
    assert by_count == set(split_cases(cases, label_ratio=0.05, seed=11).labelled_patients)


def test_only_patients_with_labels_are_labelled():
    no_labels = frozenset(f"patient{p:03d}" for p in range(0, 70, 2))
    cases = acdc_like(unlabelled_patients=no_labels)
    split = split_cases(cases, label_ratio=0.2, seed=0)
    assert not set(split.labelled_patients) & no_labels
    with pytest.raises(ConfigError, match="have labels"):
        split_cases(cases, label_ratio=0.9, seed=0)


def test_unlabelled_frames_of_a_labelled_patient_are_unused():
    cases = [Case("a_ED", "a", "train", True), Case("a_mid", "a", "train", False),
             Case("b_ED", "b", "train", True)]
    split = split_cases(cases, num_labelled_patients=2, seed=0)
    assert split.unused_cases == ("a_mid",)
    assert split.unlabelled_cases == ()


def test_json_round_trip():
    split = split_cases(acdc_like(), label_ratio=0.05, seed=9, store_url="s3://bucket/acdc.zarr")
    text = split.to_json()
    assert LabelSplit.from_json(text) == split
    with pytest.raises(ConfigError, match="format_version"):
        LabelSplit.from_json(text.replace('"format_version": 1', '"format_version": 99'))


def test_bad_arguments_are_named():
    cases = acdc_like()
    with pytest.raises(ConfigError, match="exactly one"):
        split_cases(cases, label_ratio=0.1, num_labelled_patients=3)
    with pytest.raises(ConfigError, match="no complete cases in split 'train'"):
        split_cases([c for c in cases if c.split != "train"], label_ratio=0.1)
