"""Find the cases of a NIfTI collection in one of the layouts people actually download.

Discovery only lists files and reads small text files (``Info.cfg``, ``dataset.json``, the CSV);
it never opens a volume, so it is as cheap on ``s3://`` (one recursive listing) as on a local
disk. Each layout returns :class:`SourceCase` records; a case that discovery already knows to be
broken (e.g. an ACDC frame whose ``_gt`` file is missing) carries a ``problem`` instead of being
dropped silently, so the run can report it with the file name.

Layouts:

* ``acdc``  – ``training/`` and ``testing/`` ``patientNNN/`` folders with ``Info.cfg``; the ED and
  ES frames each become one case ``patientNNN_frameXX`` of patient ``patientNNN``.
* ``lits``  – ``volume-N.nii[.gz]`` (+ ``segmentation-N.nii[.gz]``) anywhere below the root, so the
  official "Training Batch 1/2" folders work; a volume without segmentation is unlabelled.
* ``msd``   – Medical Segmentation Decathlon / nnU-Net raw: ``dataset.json``, ``imagesTr/``,
  ``labelsTr/``, ``imagesTs/`` (unlabelled); nnU-Net's ``_0000`` channel suffix is understood.
* ``folder`` – any folder plus a CSV ``image,label[,patient,split]`` with paths relative to it.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from action_ray.errors import ActionRayError
from action_ray.store.schema import SPLITS

LAYOUTS = ("acdc", "lits", "msd", "folder")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CASE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class SourceCase:
    """One (image, optional label) pair found in the source collection.

    ``image``/``label`` are paths inside the source filesystem (no protocol). ``split`` is set
    only when the layout itself assigns one (the folder CSV); ``problem`` is set when discovery
    already knows the case cannot be ingested.
    """

    case_id: str
    patient_id: str
    image: str
    label: str | None
    extra: dict = field(default_factory=dict)
    split: str | None = None
    problem: str | None = None


@dataclass
class Collection:
    """What discovery found: the cases and any metadata the layout itself declares."""

    layout: str
    root: str
    cases: list[SourceCase]
    classes: dict[int, str] | None = None
    modality: str | None = None
    name: str | None = None


def strip_nifti_suffix(name: str) -> str | None:
    """``'a.nii.gz' -> 'a'``; ``None`` for files that are not NIfTI."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def safe_case_id(text: str) -> str:
    """Map a file stem to the store's case-id alphabet ``[A-Za-z0-9_.-]``."""
    cleaned = _CASE_ID_UNSAFE.sub("_", text).strip("_")
    if not cleaned:
        raise ActionRayError(f"cannot derive a case id from {text!r}")
    return cleaned


def _is_hidden(path: str) -> bool:
    """Dot files, including the ``._x.nii.gz`` macOS resource forks in the Decathlon tarballs."""
    return any(part.startswith(".") for part in path.split("/"))


def list_files(fs, root: str) -> list[str]:
    """All non-hidden files below ``root``, as paths relative to it ('/'-separated), sorted."""
    root = root.rstrip("/")
    shown = fs.unstrip_protocol(root) if fs.protocol not in ("file", ("file", "local")) else root
    if not fs.exists(root):
        raise ActionRayError(f"source {shown} does not exist: check the path or bucket name")
    if not fs.isdir(root):
        raise ActionRayError(f"source {shown} is a file; pass the folder that holds the collection")
    relative = []
    for path in fs.find(root):
        rel = posixpath.relpath(str(path).replace("\\", "/"), root.replace("\\", "/"))
        if not _is_hidden(rel):
            relative.append(rel)
    return sorted(relative)


def _read_text(fs, path: str) -> str:
    with fs.open(path, "rb") as fh:
        return fh.read().decode("utf-8-sig")


# --------------------------------------------------------------------------------------- ACDC
def parse_info_cfg(text: str, path: str) -> dict[str, Any]:
    """Parse ACDC's ``Info.cfg`` (``Key: value`` lines) into a dict with numbers converted."""
    info: dict[str, Any] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        try:
            number = float(value)
            info[key] = int(number) if number.is_integer() and key in ("ED", "ES", "NbFrame") else number
        except ValueError:
            info[key] = value
    for key in ("ED", "ES"):
        if not isinstance(info.get(key), int):
            raise ActionRayError(f"{path}: Info.cfg has no integer '{key}:' line; cannot tell which frames to ingest")
    return info


def discover_acdc(fs, root: str, files: list[str]) -> Collection:
    """ED and ES frames of every ``patientNNN`` folder (training/ and testing/ alike).

    A patient folder without any ``_gt`` file is an unlabelled patient (as in the original ACDC
    test release); a declared frame whose ``_gt`` is missing while others exist is a problem.
    """
    by_patient: dict[str, str] = {}
    for rel in files:
        parts = rel.split("/")
        if parts[-1] == "Info.cfg" and len(parts) >= 2 and re.fullmatch(r"patient\d+", parts[-2]):
            by_patient.setdefault(parts[-2], posixpath.dirname(rel))
    file_set = set(files)
    cases = []
    for pid in sorted(by_patient):
        pdir = by_patient[pid]
        info_path = f"{root.rstrip('/')}/{pdir}/Info.cfg"
        try:
            info = parse_info_cfg(_read_text(fs, info_path), info_path)
        except (ActionRayError, UnicodeDecodeError) as exc:
            # one unreadable Info.cfg skips that patient (reported), not the whole collection
            cases.append(SourceCase(case_id=pid, patient_id=pid, image=info_path, label=None,
                                    problem=str(exc) if isinstance(exc, ActionRayError)
                                    else f"{info_path}: not a text file ({exc.reason})"))
            continue
        has_any_gt = any(f.startswith(f"{pdir}/") and strip_nifti_suffix(f) and strip_nifti_suffix(f).endswith("_gt")
                         for f in files)
        frames = [("ED", info["ED"]), ("ES", info["ES"])]
        if info["ED"] == info["ES"]:
            frames = [("ED+ES", info["ED"])]
        for phase, frame in frames:
            stem = f"{pid}_frame{frame:02d}"
            image = _find_nifti(file_set, f"{pdir}/{stem}")
            label = _find_nifti(file_set, f"{pdir}/{stem}_gt")
            problem = None
            if image is None:
                problem = f"{root.rstrip('/')}/{pdir}/{stem}.nii.gz: missing image for frame {phase}={frame} declared in Info.cfg"
            elif label is None and has_any_gt:
                problem = (f"{root.rstrip('/')}/{pdir}/{stem}_gt.nii.gz: missing label file for frame "
                           f"{phase}={frame} declared in Info.cfg")
            extra = {
                "phase": phase, "frame": frame, "group": info.get("Group"),
                "ed_frame": info["ED"], "es_frame": info["ES"], "n_frames": info.get("NbFrame"),
                "height_cm": info.get("Height"), "weight_kg": info.get("Weight"),
                "acdc_folder": pdir.split("/")[0] if "/" in pdir else "",
            }
            cases.append(SourceCase(
                case_id=stem, patient_id=pid,
                image=_abs(root, image or f"{pdir}/{stem}.nii.gz"),
                label=_abs(root, label) if label else None,
                extra=extra, problem=problem,
            ))
    return Collection("acdc", root, cases)


def _find_nifti(file_set: set[str], stem: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if stem + suffix in file_set:
            return stem + suffix
    return None


def _abs(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


# --------------------------------------------------------------------------------------- LiTS
def discover_lits(fs, root: str, files: list[str]) -> Collection:
    """``volume-N`` / ``segmentation-N`` pairs found anywhere below the root."""
    volumes: dict[int, str] = {}
    segmentations: dict[int, str] = {}
    for rel in files:
        stem = strip_nifti_suffix(posixpath.basename(rel))
        match = re.fullmatch(r"(volume|segmentation)-(\d+)", stem or "")
        if not match:
            continue
        target = volumes if match.group(1) == "volume" else segmentations
        number = int(match.group(2))
        if number in target:
            raise ActionRayError(f"LiTS number {number} appears twice: {target[number]} and {rel}; remove one copy")
        target[number] = rel
    cases = []
    for number in sorted(volumes):
        case_id = f"volume-{number}"
        seg = segmentations.get(number)
        cases.append(SourceCase(case_id, case_id, _abs(root, volumes[number]), _abs(root, seg) if seg else None,
                                extra={"lits_index": number}))
    for number in sorted(set(segmentations) - set(volumes)):
        cases.append(SourceCase(f"volume-{number}", f"volume-{number}", _abs(root, f"volume-{number}.nii"), None,
                                problem=f"{_abs(root, segmentations[number])}: segmentation without a volume-{number} image"))
    return Collection("lits", root, cases)


# ------------------------------------------------------------------------------ MSD / nnU-Net
def _classes_from_dataset_json(meta: dict, path: str) -> dict[int, str]:
    """Decathlon ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}`` label maps."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ActionRayError(f"{path}: no 'labels' mapping; cannot tell which label values are valid")
    classes: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).lstrip("-").isdigit():
            classes[int(key)] = str(value)
        elif isinstance(value, int):
            classes[value] = str(key)
        else:
            raise ActionRayError(
                f"{path}: label {key!r}: {value!r} is not a plain class index (nnU-Net region labels are not supported)"
            )
    return dict(sorted(classes.items()))


def _modality_from_dataset_json(meta: dict) -> str | None:
    channels = meta.get("channel_names") or meta.get("modality") or {}
    first = channels.get("0") if isinstance(channels, dict) else None
    if first is None:
        return None
    return "CT" if str(first).upper() == "CT" else "MR" if str(first).upper() in ("MRI", "MR", "T1", "T2", "ADC", "FLAIR", "T1GD") else str(first)


def discover_msd(fs, root: str, files: list[str]) -> Collection:
    """``imagesTr``+``labelsTr`` (labelled) and ``imagesTs`` (unlabelled) with ``dataset.json``."""
    meta_path = _abs(root, "dataset.json")
    if "dataset.json" not in files:
        raise ActionRayError(f"{meta_path} not found: an MSD / nnU-Net folder needs its dataset.json")
    try:
        meta = json.loads(_read_text(fs, meta_path))
    except json.JSONDecodeError as exc:
        raise ActionRayError(f"{meta_path}: not valid JSON ({exc})") from None
    classes = _classes_from_dataset_json(meta, meta_path)
    labels = {strip_nifti_suffix(posixpath.basename(f)): f for f in files
              if f.startswith("labelsTr/") and strip_nifti_suffix(f)}
    cases: list[SourceCase] = []
    seen: dict[str, str] = {}
    for folder, labelled in (("imagesTr", True), ("imagesTs", False)):
        for rel in files:
            if not rel.startswith(folder + "/") or rel.count("/") != 1:
                continue
            stem = strip_nifti_suffix(posixpath.basename(rel))
            if stem is None:
                continue
            channel = re.fullmatch(r"(.+)_(\d{4})", stem)
            if channel and channel.group(2) != "0000":
                continue  # nnU-Net extra channels: action-ray stores the first channel only
            case_stem = channel.group(1) if channel else stem
            case_id = safe_case_id(case_stem)
            if case_id in seen:
                raise ActionRayError(f"case id {case_id!r} found twice: {seen[case_id]} and {_abs(root, rel)}")
            seen[case_id] = _abs(root, rel)
            label = labels.get(case_stem) if labelled else None
            problem = None
            if labelled and label is None:
                problem = f"{_abs(root, 'labelsTr/' + case_stem + '.nii.gz')}: missing label for training image {rel}"
            cases.append(SourceCase(case_id, case_id, _abs(root, rel), _abs(root, label) if label else None,
                                    extra={"msd_folder": folder}, problem=problem))
    return Collection("msd", root, cases, classes=classes, modality=_modality_from_dataset_json(meta),
                      name=meta.get("name"))


# ------------------------------------------------------------------------------ folder + CSV
def discover_folder(fs, root: str, files: list[str], csv_name: str = "cases.csv") -> Collection:
    """Cases listed in a CSV with columns ``image,label[,patient,split]`` (paths relative to root).

    An empty ``label`` means unlabelled; an empty ``patient`` means the case is its own patient;
    ``split`` (train/val/test), when given, overrides the seed rule for that patient.
    """
    csv_path = csv_name if csv_name.startswith("/") else _abs(root, csv_name)
    if not fs.exists(csv_path):
        raise ActionRayError(f"{csv_path} not found: the folder layout needs a CSV 'image,label[,patient,split]' "
                             "(name it cases.csv or pass --csv)")
    reader = csv.DictReader(io.StringIO(_read_text(fs, csv_path)))
    columns = [c.strip() for c in reader.fieldnames or []]
    if "image" not in columns or "label" not in columns:
        raise ActionRayError(f"{csv_path}: header must start with 'image,label' (found {columns})")
    file_set = set(files)
    cases = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(reader, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        image = row.get("image", "")
        if not image:
            raise ActionRayError(f"{csv_path}:{line_no}: empty 'image' column")
        stem = strip_nifti_suffix(posixpath.basename(image))
        if stem is None:
            raise ActionRayError(f"{csv_path}:{line_no}: {image!r} is not a .nii/.nii.gz file")
        case_id = safe_case_id(stem)
        if case_id in seen:
            raise ActionRayError(f"{csv_path}:{line_no}: case id {case_id!r} already used on line {seen[case_id]}")
        seen[case_id] = line_no
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise ActionRayError(f"{csv_path}:{line_no}: split {split!r} must be one of {', '.join(SPLITS)}")
        label = row.get("label") or None
        problem = None
        for kind, rel in (("image", image), ("label", label)):
            if rel is not None and rel not in file_set:
                problem = problem or f"{_abs(root, rel)}: {kind} listed in {posixpath.basename(csv_path)} line {line_no} does not exist"
        cases.append(SourceCase(case_id, safe_case_id(row.get("patient") or case_id), _abs(root, image),
                                _abs(root, label) if label else None, split=split, problem=problem))
    return Collection("folder", root, cases)


DISCOVERERS: dict[str, Callable[..., Collection]] = {
    "acdc": discover_acdc, "lits": discover_lits, "msd": discover_msd, "folder": discover_folder,
}


def discover(layout: str, fs, root: str, *, csv_name: str = "cases.csv") -> Collection:
    """List the cases of the collection at ``root`` (a path in ``fs``) in the given layout."""
    if layout not in DISCOVERERS:
        raise ActionRayError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    files = list_files(fs, root)
    if layout == "folder":
        collection = discover_folder(fs, root, files, csv_name)
    else:
        collection = DISCOVERERS[layout](fs, root, files)
    if not collection.cases:
        raise ActionRayError(f"no {layout} cases found under {root!r}: check the path and --layout")
    return collection
