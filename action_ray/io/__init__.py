"""Scan files and intensities: the one owner of what ingest, synth, the data stream and predict share.

* :mod:`~action_ray.io.nifti` – read and write NIfTI files; the only place that converts between
  NIfTI's (x, y, z) voxel order and action-ray's (Z, Y, X) arrays;
* :mod:`~action_ray.io.checks` – the intensity checks a scan must pass before it is stored or predicted;
* :mod:`~action_ray.io.normalise` – intensity normalisation: its vocabulary, the per-case statistics
  it reads, and the map applied to every slab (training data and inference alike);
* :mod:`~action_ray.io.recipe_hint` – the file naming a collection's recipe (written by synth, read by ingest).

It sits below the store and everything else and imports nothing of action-ray but ``errors``.
Nothing is imported here, so ``action-ray --help`` does not pay for numpy or nibabel.
"""
