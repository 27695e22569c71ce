"""The run folder: what a training run writes, where, and how it is read back.

A run folder (``<train.storage_path>/<run name>/``, local or ``s3://``) is written by training
and read by evaluation, prediction, sweeps and the progress follower. Its names, its
checkpoints and its logs have one owner, this package, so that no layer above has to know
another layer's file names, and so that ``train`` and ``evaluation`` both depend on it instead
of on each other:

* :mod:`.layout`: every file and folder name of a run, and the paths built from a run root;
* :mod:`.files`: reading and replacing one file of a run (atomic locally, one PUT remotely);
* :mod:`.logs`: the JSON-lines logs (reports, validations, announcements) and ``result.json``;
* :mod:`.checkpoint`: the checkpoint format (save, safe load, convert, upload, download);
* :mod:`.best`: keeping the best-on-validation checkpoint in ``best/``;
* :mod:`.resolve`: which checkpoint ``last``/``best``/a path means, and loading its student.

Nothing here imports ``train``, ``evaluation``, ``tuning`` or the commands, nor Ray.
"""
