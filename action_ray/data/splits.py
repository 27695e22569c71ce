"""Choose the labelled training cases by *patient*, reproducibly and nested across ratios.

Why by patient: the ED and ES frames of one ACDC patient are near-duplicates; choosing
labelled data per case or per slice would leak one patient's anatomy into both streams and
overstate what "5 % labels" buys.

How: every train patient gets a rank from a seeded hash of its ID (SHA-256 of
``"<seed>:<patient_id>"``), and the labelled set is the first ``k`` patients in rank order
among those that have at least one labelled case. Consequences that tests pin:

* deterministic in ``seed`` (no dependence on listing order, Python hash seed or NumPy version);
* nested: for the same seed the 5 % set is a prefix of the 10 % set;
* adding new patients to a store never reshuffles the relative order of the old ones.

``k`` for a ratio is ``max(1, floor(ratio * n_train_patients))`` over *all* train patients
(70 ACDC patients: 5 % -> 3, 10 % -> 7, as in the paper's table).

The unlabelled stream is every other train case (its labels, if any, are never read). Cases of
a labelled patient that carry no label (e.g. extra cine frames) are in neither stream, so no
patient is ever on both sides; they are listed in ``unused_cases``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

from action_ray.errors import ConfigError
from action_ray.urls import redact

SPLIT_FORMAT_VERSION = 1


class _CaseLike(Protocol):
    case_id: str
    patient_id: str
    split: str
    has_label: bool


class _StoreLike(Protocol):
    url: str

    def list_cases(self, split: str | None = None, has_label: bool | None = None) -> list: ...


@dataclass(frozen=True)
class LabelSplit:
    """The labelled / unlabelled partition of a store's train split, as recorded in a run."""

    seed: int
    label_ratio: float | None
    num_labelled_patients: int
    labelled_patients: tuple[str, ...]
    unlabelled_patients: tuple[str, ...]
    labelled_cases: tuple[str, ...]
    unlabelled_cases: tuple[str, ...]
    unused_cases: tuple[str, ...] = ()
    train_split: str = "train"
    store_url: str | None = None
    patient_ranking: tuple[str, ...] = field(default=(), repr=False)

    def to_json(self) -> str:
        """Serialise for the run directory (``label_split.json``); stable key order."""
        data = asdict(self)
        data["format_version"] = SPLIT_FORMAT_VERSION
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LabelSplit":
        data = json.loads(text)
        version = data.pop("format_version", None)
        if version != SPLIT_FORMAT_VERSION:
            raise ConfigError(
                f"label split JSON has format_version={version!r}, expected {SPLIT_FORMAT_VERSION}; "
                "it was written by an incompatible action-ray"
            )
        tuple_keys = ("labelled_patients", "unlabelled_patients", "labelled_cases",
                      "unlabelled_cases", "unused_cases", "patient_ranking")
        for key in tuple_keys:
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def patient_rank_key(seed: int, patient_id: str) -> str:
    """Seeded, order-independent rank of one patient (smaller = labelled earlier)."""
    return hashlib.sha256(f"{int(seed)}:{patient_id}".encode()).hexdigest()


def rank_patients(patient_ids: Sequence[str], seed: int) -> list[str]:
    """All distinct ``patient_ids`` in labelling order for ``seed``."""
    return sorted(set(patient_ids), key=lambda pid: (patient_rank_key(seed, pid), pid))


def num_labelled_for_ratio(label_ratio: float, num_patients: int) -> int:
    """Number of labelled patients for a ratio: ``max(1, floor(ratio * n))``."""
    if not 0.0 < label_ratio <= 1.0:
        raise ConfigError(f"label_ratio={label_ratio} must be in (0, 1]")
    return max(1, math.floor(label_ratio * num_patients + 1e-9))


def split_cases(
    cases: Sequence[_CaseLike],
    *,
    label_ratio: float | None = None,
    num_labelled_patients: int | None = None,
    seed: int = 0,
    train_split: str = "train",
    store_url: str | None = None,
) -> LabelSplit:
    """Pure form of :func:`label_split` over a list of case records (any split; others ignored)."""
    if (label_ratio is None) == (num_labelled_patients is None):
        raise ConfigError("give exactly one of label_ratio or num_labelled_patients")
    train = sorted((c for c in cases if c.split == train_split), key=lambda c: c.case_id)
    if not train:
        raise ConfigError(
            f"the store{' ' + store_url if store_url else ''} has no complete cases in split "
            f"{train_split!r}; ingest data or check the split names"
        )
    patients = rank_patients([c.patient_id for c in train], seed)
    with_labels = {c.patient_id for c in train if c.has_label}
    eligible = [p for p in patients if p in with_labels]
    if label_ratio is not None:
        k = num_labelled_for_ratio(float(label_ratio), len(patients))
    else:
        k = int(num_labelled_patients)  # type: ignore[arg-type]
        if k < 1:
            raise ConfigError(f"num_labelled_patients={k} must be at least 1")
    if k > len(eligible):
        raise ConfigError(
            f"{k} labelled patients requested but only {len(eligible)} of {len(patients)} "
            f"{train_split!r} patients have labels; lower label_ratio / num_labelled_patients"
        )
    labelled_patients = set(eligible[:k])
    labelled_cases, unlabelled_cases, unused_cases = [], [], []
    for case in train:
        if case.patient_id not in labelled_patients:
            unlabelled_cases.append(case.case_id)
        elif case.has_label:
            labelled_cases.append(case.case_id)
        else:
            unused_cases.append(case.case_id)
    return LabelSplit(
        seed=int(seed),
        label_ratio=None if label_ratio is None else float(label_ratio),
        num_labelled_patients=k,
        labelled_patients=tuple(p for p in patients if p in labelled_patients),
        unlabelled_patients=tuple(p for p in patients if p not in labelled_patients),
        labelled_cases=tuple(labelled_cases),
        unlabelled_cases=tuple(unlabelled_cases),
        unused_cases=tuple(unused_cases),
        train_split=train_split,
        store_url=store_url,
        patient_ranking=tuple(patients),
    )


def label_split(
    store: _StoreLike,
    label_ratio: float | None = None,
    num_labelled_patients: int | None = None,
    seed: int = 0,
    *,
    train_split: str = "train",
) -> LabelSplit:
    """Split ``store``'s train cases into labelled and unlabelled sets at the patient level.

    Give either ``label_ratio`` (fraction of train patients, at least one patient) or
    ``num_labelled_patients``. Only complete cases are considered (the store lists nothing else).
    """

    return split_cases(
        store.list_cases(split=train_split),
        label_ratio=label_ratio,
        num_labelled_patients=num_labelled_patients,
        seed=seed,
        train_split=train_split,
        store_url=redact(getattr(store, "url", None)),
    )
