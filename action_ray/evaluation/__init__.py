"""Inference and evaluation of trained runs: the Python API behind ``action-ray evaluate``
and ``action-ray predict``.

Public entry points (stable signatures; the demo and the quality benchmark call them):

* :func:`evaluate_run` — per-case metrics of a run's checkpoint on one split of a store,
  written as ``metrics.csv``, ``summary.json``, ``summary.md`` and ``overlays.png``.
* :func:`predict_cases` — NIfTI label maps (and optionally probability maps) for store cases
  or NIfTI files.
"""

from __future__ import annotations

from action_ray.evaluation.evaluate import evaluate_run
from action_ray.evaluation.predict import predict_cases

__all__ = ["evaluate_run", "predict_cases"]
