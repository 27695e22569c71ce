"""Keeping the best-on-validation checkpoint of a run in ``<run>/best/`` (method.md §8.1).

The reported model is the last FT checkpoint; the best one *on the validation split* is kept
too, so ``action-ray evaluate RUN --checkpoint best`` can score it. Validation
(:mod:`action_ray.train.validation`) scores a checkpoint and offers it here; Ray deletes
periodic checkpoints beyond ``train.num_to_keep``, hence the copy. Files::

    best/{state.pt,meta.json}  copy of the best checkpoint (the layout evaluation reads),
    best/best.json             with {ft_step, val_dice, source, checkpoint}: what it holds
    best.json                  a copy of that record at the top, for people and tools

Crash safety: locally, ``best/`` is assembled as ``.best-new/`` and swapped in by renames
(a crash mid-swap is repaired from ``.best-old/`` the next time the keeper looks); on object
stores, where a directory cannot be renamed, ``best/meta.json`` is removed first and written
last, so an interrupted copy reads as *no* best rather than a half-written one.
The record travels inside ``best/`` (so it always describes the weights beside it); a resumed
run reads it, so a worse later checkpoint never replaces a better earlier one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from action_ray.runs.files import write_file
from action_ray.runs.layout import (
    BEST_DIR,
    BEST_NEW,
    BEST_OLD,
    BEST_RECORD,
    CHECKPOINT_FILES,
    META_FILE,
    STATE_FILE,
    best_checkpoint,
    join,
)
from action_ray.urls import filesystem_for, is_remote, redact


@dataclass(frozen=True)
class BestRecord:
    """What ``best.json`` holds: the FT step and val Dice of ``best/``, and where it came from."""

    ft_step: int
    val_dice: float
    source: str
    checkpoint: str


class BestKeeper:
    """Keeps ``<run>/best/`` equal to the validated checkpoint with the highest val Dice.

    Stateless between calls: every :meth:`offer` reads ``best.json`` again, so a resumed run (a
    new callback, a new controller) continues from what the previous session kept.
    """

    def __init__(self, run_dir: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.run_dir = str(run_dir).rstrip("/")
        self.storage_options = dict(storage_options or {}) or None
        self.fs, self.root = filesystem_for(self.run_dir, self.storage_options)
        self.remote = is_remote(self.run_dir)

    @property
    def best_url(self) -> str:
        return best_checkpoint(self.run_dir)

    def current(self, repair: bool = False) -> BestRecord | None:
        """The kept best, or None (none yet, or ``best/`` lost its marker in a crash).

        The record is read from ``best/`` itself (written with the checkpoint, swapped in with
        it), so it always describes the weights next to it. ``repair`` (the writer only) first
        finishes a swap a crash interrupted; readers such as ``evaluate`` must not, since the
        writer may be assembling ``.best-new/`` at that moment.
        """
        if repair:
            self._repair()
        best = join(self.root, BEST_DIR)
        if not self.fs.exists(join(best, META_FILE)) or not self.fs.exists(join(best, BEST_RECORD)):
            return None
        with self.fs.open(join(best, BEST_RECORD), "r") as handle:
            return BestRecord(**json.loads(handle.read()))

    def offer(self, ft_step: int, val_dice: float, source: str) -> bool:
        """Keep the checkpoint at ``source`` as best if ``val_dice`` beats the kept one.

        A tie keeps the earlier checkpoint; a NaN score is never kept. Returns whether ``best/``
        now holds ``source``.
        """
        if val_dice is None or math.isnan(val_dice):
            return False
        kept = self.current(repair=True)
        if kept is not None and not val_dice > kept.val_dice:
            return False
        record = json.dumps(asdict(BestRecord(int(ft_step), float(val_dice), str(source), self.best_url)), indent=2)
        sfs, sroot = filesystem_for(source, self.storage_options)
        if not sfs.exists(join(sroot, META_FILE)):
            raise FileNotFoundError(f"no complete checkpoint at {redact(source)} (missing {META_FILE})")
        if self.remote:
            self._copy_remote(sfs, sroot, record)
        else:
            self._copy_local(sfs, sroot, record)
        write_file(join(self.run_dir, BEST_RECORD), record, self.storage_options)  # a copy at the top, for people
        return True

    # ---- copying
    def _copy_remote(self, sfs, sroot: str, record: str) -> None:
        """Object stores cannot rename a directory: invalidate, copy the state, marker last."""
        best = join(self.root, BEST_DIR)
        if self.fs.exists(join(best, META_FILE)):
            self.fs.rm(join(best, META_FILE))

        def copy(name: str) -> None:
            with sfs.open(join(sroot, name), "rb") as src, self.fs.open(join(best, name), "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 2**20)

        copy(STATE_FILE)
        with self.fs.open(join(best, BEST_RECORD), "w") as handle:
            handle.write(record)
        copy(META_FILE)  # the completion marker last

    def _copy_local(self, sfs, sroot: str, record: str) -> None:
        """Assemble ``.best-new/``, then swap it in with renames; no partial ``best/`` ever."""
        new, old, best = (os.path.join(self.root, name) for name in (BEST_NEW, BEST_OLD, BEST_DIR))
        shutil.rmtree(new, ignore_errors=True)
        try:
            os.makedirs(new)
            for name in CHECKPOINT_FILES:
                sfs.get_file(join(sroot, name), os.path.join(new, name))
            with open(os.path.join(new, BEST_RECORD), "w") as handle:
                handle.write(record)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(best):
            os.rename(best, old)
        os.rename(new, best)
        shutil.rmtree(old, ignore_errors=True)

    def _repair(self) -> None:
        """Undo a local swap that a crash interrupted between its two renames; drop leftovers."""
        if self.remote:
            return
        new, old, best = (os.path.join(self.root, name) for name in (BEST_NEW, BEST_OLD, BEST_DIR))
        if os.path.isdir(old) and not os.path.exists(best):
            os.rename(old, best)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)


def read_best(run_dir: str, storage_options: Mapping[str, Any] | None = None) -> BestRecord | None:
    """The best-on-validation checkpoint a run kept, or None."""
    return BestKeeper(run_dir, storage_options).current()
