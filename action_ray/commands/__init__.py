"""The verbs of ``action-ray``, one module each (``synth``, ``ingest``, ``info``, ``train``, ``tune``,
``evaluate``, ``predict``, ``bench``, ``convert-checkpoint``, ``demo``).

This is the top layer: a verb turns its command line into a call of the Python API of the
package that does the work (store, ingest, train, tuning, evaluation) and prints the outcome;
no package below imports a verb. :mod:`action_ray.commands.options` holds the options several
verbs share. :mod:`action_ray.cli` dispatches to the verbs.
"""
