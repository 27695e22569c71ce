"""Small synthetic NIfTI collections written in the real on-disk layouts, for ingest tests.

The phantoms (``action_ray.synth``) are the realistic data; these helpers are the opposite:
tiny, instant, and fully controlled, so that a test can plant exactly one defect (a truncated
gzip, a shifted affine, a label value 7) and check that ingest reports it. Every writer returns
what it wrote, so tests compare the store against the files rather than against constants.

Conventions: images are float32 (bit-exact round trips), labels uint8, voxel spacing in mm via
the affine's diagonal. ``expected_arrays(path)`` gives the store's (Z, Y, X) view of a file.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: In-plane size and slice count of the default test volume (x, y, z), kept tiny for speed.
SMALL_SHAPE = (20, 16, 5)


@dataclass(frozen=True)
class Written:
    """One case written to disk: where its files are and what the store should hold."""

    case_id: str
    patient_id: str
    image: Path
    label: Path | None


def make_affine(spacing=(1.5, 1.25, 6.0), origin=(-10.0, 20.0, 5.0)) -> np.ndarray:
    """A 4x4 voxel->mm affine with the given (sx, sy, sz) spacing."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def make_volume(seed: int, shape=SMALL_SHAPE, n_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 image (x, y, z) plus a uint8 label of nested boxes using all classes."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 20.0, size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    x, y, _ = shape
    for k in range(1, n_classes):
        lo_x, lo_y = k * x // (2 * n_classes), k * y // (2 * n_classes)
        label[lo_x : x - lo_x, lo_y : y - lo_y, :] = k
        image[label == k] += 50.0 * k
    return image, label


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI-1 (gzip when the name ends in .gz), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, make_affine() if affine is None else affine), str(path))
    return path


def expected_arrays(path: Path | str) -> np.ndarray:
    """What the store must hold for this file: float32 data transposed to (Z, Y, X)."""
    data = np.asanyarray(nib.load(str(path)).dataobj)
    return np.ascontiguousarray(data.transpose(2, 1, 0))


def write_acdc(root: Path, n_patients: int = 3, *, first: int = 1, folder: str = "training",
               shape=SMALL_SHAPE) -> list[Written]:
    """ACDC layout: ``training/patientNNN/{Info.cfg, patientNNN_frameXX[_gt].nii.gz}``.

    Patient ``i`` has ED frame 1 and ES frame ``10 + i``; the group cycles through ACDC's five.
    """
    groups = ["DCM", "HCM", "MINF", "NOR", "RV"]
    written = []
    for i in range(first, first + n_patients):
        pid = f"patient{i:03d}"
        pdir = root / folder / pid
        pdir.mkdir(parents=True, exist_ok=True)
        ed, es = 1, 10 + i
        (pdir / "Info.cfg").write_text(
            f"ED: {ed}\nES: {es}\nGroup: {groups[i % 5]}\nHeight: 170.0\nNbFrame: 30\nWeight: 70.0\n"
        )
        for frame in (ed, es):
            image, label = make_volume(seed=i * 100 + frame, shape=shape)
            stem = f"{pid}_frame{frame:02d}"
            img = save(pdir / f"{stem}.nii.gz", image)
            lbl = save(pdir / f"{stem}_gt.nii.gz", label)
            written.append(Written(stem, pid, img, lbl))
    return written


def write_lits(root: Path, n: int = 3, *, unlabelled: tuple[int, ...] = (), n_classes: int = 3,
               shape=SMALL_SHAPE) -> list[Written]:
    """LiTS layout in the official two batch folders: ``volume-N.nii`` + ``segmentation-N.nii``."""
    written = []
    for i in range(n):
        batch = root / ("Training Batch 1" if i % 2 == 0 else "Training Batch 2")
        image, label = make_volume(seed=1000 + i, shape=shape, n_classes=n_classes)
        img = save(batch / f"volume-{i}.nii", (image - 150.0).astype(np.float32))
        lbl = None if i in unlabelled else save(batch / f"segmentation-{i}.nii", label)
        written.append(Written(f"volume-{i}", f"volume-{i}", img, lbl))
    return written


def write_msd(root: Path, n_train: int = 3, n_test: int = 1, *, nnunet: bool = False,
              shape=SMALL_SHAPE) -> list[Written]:
    """Decathlon (``la_003.nii.gz``) or nnU-Net raw (``la_003_0000.nii.gz``) layout + dataset.json."""
    labels = {"0": "background", "1": "liver", "2": "tumour"}
    if nnunet:
        meta = {"channel_names": {"0": "CT"}, "labels": {v: int(k) for k, v in labels.items()},
                "numTraining": n_train, "file_ending": ".nii.gz", "name": "Dataset003_Liver"}
    else:
        meta = {"name": "Liver", "modality": {"0": "CT"}, "labels": labels, "numTraining": n_train,
                "training": [], "test": []}
    suffix = "_0000" if nnunet else ""
    written = []
    for i in range(n_train + n_test):
        case = f"liver_{i:03d}"
        image, label = make_volume(seed=2000 + i, shape=shape, n_classes=3)
        if i < n_train:
            img = save(root / "imagesTr" / f"{case}{suffix}.nii.gz", image)
            lbl = save(root / "labelsTr" / f"{case}.nii.gz", label)
            if not nnunet:
                meta["training"].append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            img = save(root / "imagesTs" / f"{case}{suffix}.nii.gz", image)
            lbl = None
            if not nnunet:
                meta["test"].append(f"./imagesTs/{case}.nii.gz")
        written.append(Written(case, case, img, lbl))
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    # The Decathlon tarballs carry macOS resource forks; discovery must ignore them.
    (root / "imagesTr" / "._liver_000.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    return written


def write_folder(root: Path, n: int = 4, *, unlabelled: tuple[int, ...] = (), with_patient: bool = True,
                 splits: dict[int, str] | None = None, shape=SMALL_SHAPE) -> list[Written]:
    """A plain folder with ``cases.csv`` (``image,label[,patient,split]``, paths relative to root)."""
    header = ["image", "label"] + (["patient"] if with_patient else []) + (["split"] if splits else [])
    rows = [",".join(header)]
    written = []
    for i in range(n):
        image, label = make_volume(seed=3000 + i, shape=shape, n_classes=2)
        img = save(root / "scans" / f"scan_{i:02d}.nii.gz", image)
        lbl = None if i in unlabelled else save(root / "masks" / f"scan_{i:02d}_mask.nii.gz", label)
        patient = f"P{i // 2}"
        row = [f"scans/{img.name}", f"masks/{lbl.name}" if lbl else ""]
        row += [patient] if with_patient else []
        row += [splits.get(i, "")] if splits else []
        rows.append(",".join(row))
        written.append(Written(f"scan_{i:02d}", patient if with_patient else f"scan_{i:02d}", img, lbl))
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return written


def truncate_gzip(path: Path) -> None:
    """Cut a .nii.gz in half, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def gunzip_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if is_gzip(path) else path.read_bytes()
