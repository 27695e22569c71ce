"""Ray Tune sweeps over training configs (``action-ray tune``) and their result tables.

* :mod:`~action_ray.tuning.space` - the sweep file: base config, search space, Tune settings;
* :mod:`~action_ray.tuning.driver` - one trial = one driver function fitting a `TorchTrainer`
  (ray-notes §6), validation Dice reported to Tune from FT checkpoints, ASHA or FIFO;
* :mod:`~action_ray.tuning.results` - ``results.csv`` / ``results.md`` (mean ± sd over seeds);
* :mod:`~action_ray.tuning.plots` - ``dice_vs_label_ratio.png``.

Nothing heavy is imported here; ``space`` needs pydantic and yaml only.
"""
