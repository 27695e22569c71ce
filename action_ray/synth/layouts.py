"""Write phantoms in the real ACDC and LiTS on-disk layouts, so one ingest path serves both.

* ACDC: ``OUT/training/patientNNN/{Info.cfg, patientNNN_frameXX.nii.gz,
  patientNNN_frameXX_gt.nii.gz}`` for the ED and ES frames, patients numbered from 001.
* LiTS: ``OUT/volume-N.nii`` and ``OUT/segmentation-N.nii``, N from 0.

Every file is written atomically (a temporary name in the same folder, then ``os.replace``),
so a killed run never leaves a half-written NIfTI, and "all files of a case exist" means the
case is complete, which is what makes ``action-ray synth`` resumable. Gzip output has no
time stamp (:func:`action_ray.io.nifti.nifti_bytes`), so the bytes depend only on the data
(identical files for any ``--workers``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from action_ray.files import write_atomic
from action_ray.io.nifti import affine_from_spacing, nifti_bytes, nifti_image
from action_ray.synth.cardiac import CardiacCase
from action_ray.synth.liver import LiverCase

#: gzip level of the ACDC-layout ``.nii.gz`` files.
GZIP_LEVEL = 6


def phantom_file_bytes(volume_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], gzipped: bool) -> bytes:
    """A ``(Z, Y, X)`` phantom volume as NIfTI-1 bytes on an axis-aligned grid of ``spacing_zyx``.

    The affine is ``diag(dx, dy, dz, 1)`` (:func:`action_ray.io.nifti.affine_from_spacing`);
    the axis order and the header are :mod:`action_ray.io.nifti`'s, as for every file action-ray writes.
    """
    if volume_zyx.ndim != 3:
        raise ValueError(f"phantom_file_bytes: expected a (Z, Y, X) volume, got shape {volume_zyx.shape}")
    image = nifti_image(volume_zyx, affine_from_spacing(spacing_zyx))
    return nifti_bytes(image, compresslevel=GZIP_LEVEL if gzipped else None)


def acdc_patient_dir(out: Path, index: int) -> Path:
    """``OUT/training/patientNNN`` for 0-based case ``index`` (ACDC numbers patients from 001)."""
    return Path(out) / "training" / f"patient{index + 1:03d}"


def acdc_info_text(case: CardiacCase) -> str:
    """ACDC's ``Info.cfg``: one ``Key: value`` per line, in ACDC's key order."""
    return (
        f"ED: {case.ed_frame}\nES: {case.es_frame}\nGroup: {case.group}\n"
        f"Height: {case.height_cm:.1f}\nNbFrame: {case.nb_frames}\nWeight: {case.weight_kg:.1f}\n"
    )


def acdc_files(out: Path, index: int, ed_frame: int, es_frame: int) -> list[Path]:
    """All files of one ACDC patient; ``Info.cfg`` last because it is written last."""
    folder = acdc_patient_dir(out, index)
    stem = folder.name
    files = []
    for frame in (ed_frame, es_frame):
        files += [folder / f"{stem}_frame{frame:02d}.nii.gz", folder / f"{stem}_frame{frame:02d}_gt.nii.gz"]
    return files + [folder / "Info.cfg"]


def acdc_patient_complete(out: Path, index: int) -> bool:
    """True when the patient's Info.cfg and the four frames it names all exist."""
    info = acdc_patient_dir(out, index) / "Info.cfg"
    if not info.is_file():
        return False
    values = {}
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    try:
        ed, es = int(values["ED"]), int(values["ES"])
    except (KeyError, ValueError):
        return False
    return all(p.is_file() for p in acdc_files(out, index, ed, es))


def write_acdc_patient(out: Path, index: int, case: CardiacCase) -> list[Path]:
    """Write one patient (ED + ES image and label, then Info.cfg); returns the paths written."""
    paths = acdc_files(out, index, case.ed_frame, case.es_frame)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    volumes = (case.ed_image, case.ed_label, case.es_image, case.es_label)
    for path, volume in zip(paths, volumes):
        write_atomic(path, phantom_file_bytes(volume, case.spacing, gzipped=True))
    write_atomic(paths[-1], acdc_info_text(case).encode())
    return paths


def lits_files(out: Path, index: int) -> list[Path]:
    """``volume-N.nii`` and ``segmentation-N.nii`` (N = ``index``, from 0)."""
    return [Path(out) / f"volume-{index}.nii", Path(out) / f"segmentation-{index}.nii"]


def lits_case_complete(out: Path, index: int) -> bool:
    return all(p.is_file() for p in lits_files(out, index))


def write_lits_case(out: Path, index: int, case: LiverCase) -> list[Path]:
    """Write one LiTS volume/segmentation pair (uncompressed ``.nii`` as in LiTS)."""
    paths = lits_files(out, index)
    Path(out).mkdir(parents=True, exist_ok=True)
    # The label goes first: the image's presence then implies a complete pair.
    write_atomic(paths[1], phantom_file_bytes(case.label, case.spacing, gzipped=False))
    write_atomic(paths[0], phantom_file_bytes(case.image, case.spacing, gzipped=False))
    return paths
