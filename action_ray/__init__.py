"""action-ray: semi-supervised medical image segmentation with ACTION on Ray clusters.

The package is layered so that the scientific core can be used without Ray:

* ``action_ray.synth``   procedural phantoms written in real dataset layouts (numpy/scipy)
* ``action_ray.store``   the chunked Zarr v3 volume store (local or ``s3://``)
* ``action_ray.ingest``  NIfTI collections -> store, with dask, resumable
* ``action_ray.model``, ``action_ray.losses``, ``action_ray.bank``, ``action_ray.augment``,
  ``action_ray.train.steps``  the ACTION method in pure PyTorch (no Ray imports)
* ``action_ray.data``, ``action_ray.train``, ``action_ray.tune``  the Ray layers
"""

__version__ = "0.1.0"
