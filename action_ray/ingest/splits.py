"""Assign train/val/test by patient, never by case or slice.

Rule, in order of precedence, per patient:

1. a split file (``--split-file`` or the recipe's), mapping ``train/val/test`` to patient ids;
2. a split the layout itself gives (the ``split`` column of the folder CSV);
3. otherwise the seed rule: patients that have at least one labelled case are sorted, shuffled
   with ``np.random.default_rng(seed)`` and cut 70/10/20 (rounded, in that order).

Patients with only unlabelled cases (``imagesTs``, LiTS volumes without segmentation, ACDC
patients without ``_gt`` files) go to ``train``: they cannot be evaluated, and the unlabelled
training stream is what they are for. Both frames of an ACDC patient share the patient id and
therefore always share the split. A patient with conflicting splits (from the CSV) is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from action_ray.errors import ActionRayError
from action_ray.ingest.layouts import SourceCase

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def seed_split(patient_ids: Iterable[str], seed: int = 0,
               fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, str]:
    """Deterministic patient -> split from (sorted ids, seed); independent of input order."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ActionRayError(f"split fractions {list(fractions)} must be three non-negative numbers summing to 1")
    ordered = sorted(set(patient_ids))
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    n_train = int(round(fractions[0] * len(shuffled)))
    n_val = int(round((fractions[0] + fractions[1]) * len(shuffled))) - n_train
    assignment = {}
    for index, pid in enumerate(shuffled):
        assignment[pid] = "train" if index < n_train else "val" if index < n_train + n_val else "test"
    return assignment


def assign_splits(cases: Sequence[SourceCase], *, seed: int = 0, split_file: Mapping[str, str] | None = None,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[dict[str, str], list[str]]:
    """Return ``(patient -> split, notes)`` for every patient in ``cases`` (rule in module doc).

    ``notes`` are human-readable remarks for the run log, e.g. patients missing from the split
    file (those are split among themselves by the seed rule).
    """
    notes: list[str] = []
    layout_given: dict[str, str] = {}
    for case in cases:
        if case.split is None:
            continue
        previous = layout_given.setdefault(case.patient_id, case.split)
        if previous != case.split:
            raise ActionRayError(f"patient {case.patient_id!r} has cases in both {previous!r} and {case.split!r}; "
                                 "a patient must stay in one split")
    labelled = {c.patient_id for c in cases if c.label is not None}
    assignment: dict[str, str] = {}
    if split_file:
        assignment.update({pid: s for pid, s in split_file.items() if pid in {c.patient_id for c in cases}})
    for pid, split in layout_given.items():
        assignment.setdefault(pid, split)
    remaining = sorted(labelled - set(assignment))
    if split_file and remaining:
        notes.append(f"{len(remaining)} labelled patients are not in the split file; split 70/10/20 by seed {seed}: "
                     + ", ".join(remaining[:5]) + (" …" if len(remaining) > 5 else ""))
    assignment.update(seed_split(remaining, seed, fractions))
    unlabelled_only = sorted({c.patient_id for c in cases} - set(assignment))
    for pid in unlabelled_only:
        assignment[pid] = "train"
    if unlabelled_only:
        notes.append(f"{len(unlabelled_only)} unlabelled-only patients go to split 'train' (for semi-supervised use)")
    return assignment, notes
