"""``predict_cases``: label maps (and probabilities) as NIfTI, in the scanner frame of the input.

Inputs are store cases (``--store``) or NIfTI files. Either way the volume goes through the
training data path (``inference.predict_case``): store cases with their stored statistics,
NIfTI files with the same statistics computed the way ingest computes them
(:func:`action_ray.io.normalise.intensity_stats` on the float32 volume in store orientation).

Files are read and written by :mod:`action_ray.io.nifti`, the one place that converts between
the store's (Z, Y, X) and NIfTI's (x, y, z): voxel (i, j, k) of the output is voxel (i, j, k)
of the input and the input's affine applies unchanged. Label maps are uint8; probability maps
are float32, 4-D (X, Y, Z, C), classes last (NIfTI-1 has no float16 type, so half precision is
not offered).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from action_ray.data.streams import StreamSettings
from action_ray.errors import ConfigError
from action_ray.evaluation.inference import (
    InferenceSettings,
    Network,
    inference_settings,
    predict_case,
)
from action_ray.io.checks import check_image
from action_ray.io.nifti import nifti_bytes, nifti_image, read_scan
from action_ray.io.normalise import intensity_stats
from action_ray.runs.resolve import load_student, resolve_checkpoint
from action_ray.store import open_store
from action_ray.urls import filesystem_for, redact, with_protocol

log = logging.getLogger(__name__)

LABEL_SUFFIX = "_seg.nii.gz"
PROBABILITY_SUFFIX = "_prob.nii.gz"
#: gzip level of the written maps.
GZIP_LEVEL = 4


@dataclass
class InputVolume:
    """One volume to predict: raw image (Z, Y, X) float32, its stats, affine and output name."""

    name: str
    image: np.ndarray
    stats: Mapping[str, float]
    affine: np.ndarray
    header: Any = None  # the source NIfTI header (NIfTI inputs): codes and units carried over


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def store_volumes(store, case_ids: Sequence[str]) -> Iterator[InputVolume]:
    """Volumes of store cases, with their stored statistics and the source affine."""
    for case_id in case_ids:
        info = store.case(case_id)
        image, _ = store.read_volume(case_id)
        yield InputVolume(case_id, image, info.stats, np.asarray(info.affine, dtype=np.float64))


def nifti_volumes(paths: Sequence[str], storage_options: Mapping[str, Any] | None) -> Iterator[InputVolume]:
    """Volumes of NIfTI files (local or remote), read, checked and reoriented as ingest does."""

    for path in paths:
        fs, fs_path = filesystem_for(path, storage_options)
        scan = read_scan(fs, fs_path, dtype=np.float32)
        image = check_image(scan.voxels, path)
        yield InputVolume(_stem(path), image, intensity_stats(image), scan.affine, scan.header)


def write_prediction(out_dir: str, volume: InputVolume, labels: np.ndarray, probabilities: np.ndarray | None,
                     storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Write ``<name>_seg.nii.gz`` (uint8) and, if given, ``<name>_prob.nii.gz`` (float32, classes last)."""

    fs, root = filesystem_for(out_dir, storage_options)
    fs.makedirs(root, exist_ok=True)
    written = []
    outputs = [(LABEL_SUFFIX, labels.astype(np.uint8, copy=False))]
    if probabilities is not None:
        outputs.append((PROBABILITY_SUFFIX, probabilities.astype(np.float32, copy=False)))
    for suffix, array in outputs:
        path = f"{root.rstrip('/')}/{volume.name}{suffix}"
        with fs.open(path, "wb") as handle:
            handle.write(nifti_bytes(nifti_image(array, volume.affine, volume.header), GZIP_LEVEL))
        written.append(with_protocol(str(out_dir), path))
    return written


def _settings_for_niftis(config, storage_options, batch_size, normalisation) -> InferenceSettings:
    """Inference settings for files outside any store: the run's normalisation, resolved
    against the *training* store's recipe when the run defers to it."""

    explicit = normalisation if normalisation is not None else StreamSettings.from_config(config.data).normalisation
    if explicit is not None:
        return inference_settings(config, None, batch_size=batch_size, normalisation=explicit)

    try:
        meta = open_store(config.data.store, storage_options).dataset_meta if config.data.store else None
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user here
        meta = None
        log.debug("training store unreachable: %s", exc)
    if meta is None:
        raise ConfigError(
            f"the run normalises intensities with its store's recipe, but the training store "
            f"{redact(config.data.store)!r} cannot be opened from here; pass --normalisation METHOD "
            "(percentile, window, minmax, zscore, none) matching the training data, or --store"
        )
    return inference_settings(config, meta, batch_size=batch_size)


def predict_volumes(network: Network, volumes: Sequence[InputVolume] | Iterator[InputVolume],
                    settings: InferenceSettings, out_dir: str, *, probabilities: bool = False,
                    storage_options: Mapping[str, Any] | None = None, progress: bool = True,
                    total: int | None = None) -> list[str]:
    """Predict every volume and write its NIfTI outputs; returns the paths written."""
    from tqdm import tqdm

    written: list[str] = []
    for volume in tqdm(volumes, total=total, desc="predict", unit="case", disable=not progress):
        prediction = predict_case(network, volume.image, volume.stats, settings, case_id=volume.name,
                                  keep_probabilities=probabilities)
        written += write_prediction(out_dir, volume, prediction.labels, prediction.probabilities, storage_options)
    return written


def predict_cases(
    checkpoint: str,
    out_dir: str,
    *,
    store_url: str | None = None,
    split: str | None = None,
    cases: Sequence[str] | None = None,
    niftis: Sequence[str] | None = None,
    probabilities: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
    normalisation: str | None = None,
) -> list[str]:
    """Write NIfTI label maps (uint8, the source's affine) for store cases or NIfTI files.

    checkpoint: a run directory (its last checkpoint is used) or a checkpoint directory, local
    or ``s3://``. Give either ``store_url`` (with ``cases`` ids, or every case of ``split``,
    or every case) or ``niftis`` (paths or URLs). ``normalisation`` overrides the intensity
    normalisation method (only needed for NIfTI inputs when the training store is unreachable).
    Returns the written paths: ``<out_dir>/<case>_seg.nii.gz`` and, with ``probabilities``,
    ``<case>_prob.nii.gz``.
    """

    if (store_url is None) == (not niftis):
        raise ConfigError("predict needs either --store STORE (optionally --split/--cases) or NIfTI files, not both")
    if store_url is None and (split or cases):
        raise ConfigError("--split and --cases select store cases; they need --store")
    options = dict(storage_options or {}) or None
    student = load_student(resolve_checkpoint(str(checkpoint), "last", options), device, options)
    if store_url is not None:
        store = open_store(store_url, options)
        ids = list(cases) if cases else [c.case_id for c in store.list_cases(split=split)]
        if not ids:
            where = f" in split {split!r}" if split else ""
            raise ConfigError(f"store {redact(store_url)} has no complete case{where}")
        settings = inference_settings(student.config, store.dataset_meta, batch_size=batch_size,
                                      normalisation=normalisation)
        volumes: Iterator[InputVolume] = store_volumes(store, ids)
        total = len(ids)
    else:
        settings = _settings_for_niftis(student.config, options, batch_size, normalisation)
        volumes = nifti_volumes(list(niftis or []), options)
        total = len(niftis or [])
    return predict_volumes(student.network, volumes, settings, str(out_dir), probabilities=probabilities,
                           storage_options=options, progress=progress, total=total)
