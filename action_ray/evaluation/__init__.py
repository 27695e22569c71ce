"""Inference and evaluation of trained runs: the Python API behind ``action-ray evaluate``
and ``action-ray predict``.

Public entry points (stable signatures; the demo and the quality benchmark call them):

* :func:`evaluate_run` — per-case metrics of a run's checkpoint on one split of a store,
  written as ``metrics.csv``, ``summary.json``, ``summary.md`` and ``overlays.png``.
* :func:`predict_cases` — NIfTI label maps (and optionally probability maps) for store cases
  or NIfTI files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def evaluate_run(
    run_dir: str | Path,
    store_url: str,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    checkpoint: str = "last",
    empty: str = "strict",
    storage_options: Mapping[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Evaluate a run's student on ``split`` of the store; return the summary dict."""
    from action_ray.evaluation.evaluate import evaluate_run as _impl

    return _impl(run_dir, store_url, split=split, out_dir=out_dir, checkpoint=checkpoint, empty=empty,
                 storage_options=storage_options, device=device, batch_size=batch_size, progress=progress)


def predict_cases(
    checkpoint: str,
    out_dir: str | Path,
    *,
    store_url: str | None = None,
    split: str | None = None,
    cases: Sequence[str] | None = None,
    niftis: Sequence[str] | None = None,
    probabilities: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
) -> list[Path]:
    """Write NIfTI label maps (uint8, the source's affine) for store cases or NIfTI files."""
    from action_ray.evaluation.predict import predict_cases as _impl

    return _impl(checkpoint, out_dir, store_url=store_url, split=split, cases=cases, niftis=niftis,
                 probabilities=probabilities, storage_options=storage_options, device=device,
                 batch_size=batch_size, progress=progress)


__all__ = ["evaluate_run", "predict_cases"]
