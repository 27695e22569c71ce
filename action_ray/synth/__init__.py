"""Procedural phantoms with exact ground truth, written in the real ACDC and LiTS layouts.

* :func:`action_ray.synth.cardiac.cardiac_case` - ACDC-like SAX cine, ED and ES (0 bg, 1 RV,
  2 MYO, 3 LV);
* :func:`action_ray.synth.liver.liver_case` - LiTS-like CT in HU (0 bg, 1 liver, 2 tumour);
* :mod:`action_ray.synth.layouts` - NIfTI writers for both on-disk layouts;
* :mod:`action_ray.synth.collection` - a whole collection, many cases in parallel, resumable (``action-ray synth``).

Nothing is imported here, so ``action-ray --help`` does not pay for numpy/scipy/nibabel.
The design and calibration targets are in ``docs/phantoms.md``.
"""
