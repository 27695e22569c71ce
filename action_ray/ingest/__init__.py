"""NIfTI collections -> Zarr volume store (``action-ray ingest``).

Modules, one job each:

* :mod:`~action_ray.ingest.layouts`  – find cases in ACDC / LiTS / MSD (nnU-Net) / folder+CSV layouts;
* :mod:`~action_ray.ingest.validate` – load one NIfTI pair (through :mod:`action_ray.io.nifti`) and reject bad input;
* :mod:`~action_ray.ingest.splits`   – train/val/test by patient (split file or seeded 70/10/20);
* :mod:`~action_ray.ingest.runner`   – one dask task per case, resumable, with a summary table;
* the verb itself is :mod:`action_ray.commands.ingest`.

Scheduler choice: ``threads`` is the default because it measured faster than ``processes`` for
this workload on a 2-core machine (``action-ray bench ingest``): nibabel's gzip decode and the
store's Blosc compression release the GIL, and worker processes pay a spawn and import cost.
"""
