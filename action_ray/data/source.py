"""A Ray Data ``Datasource`` over an action-ray volume store: rows of 2-D slices or 3-D patches.

Why a custom source: ``ray.data.read_zarr`` only reads Zarr v2, and our store is Zarr v3 with
per-case metadata (statistics for normalisation, label flag) that a generic reader ignores.

Read tasks are planned on the driver from the store's case metadata only (no voxel reads) and
sized by bytes: each task covers whole cases' contiguous slice ranges, packed until the task
holds at least ``target_task_bytes`` of output (16 MiB by default), and a case larger than that
is cut into slabs aligned to its z chunks. Ray Data's default of ~200 tiny read tasks per
dataset (then "SplitBlocks") halves throughput on small clusters; ``build_streams`` therefore
asks Ray for exactly ``len(read tasks)`` blocks. Each task opens the store *inside the worker*,
reads one slab per unit (one ranged Zarr read, never the whole store), normalises it with the
case's stored statistics, resizes it to the training size and yields one block per unit.

Row schema (every block of one datasource has the same columns, as ``iter_torch_batches`` needs):

* slice mode: ``image`` float32 (1, H, W); ``label`` uint8 (H, W) when ``with_label``;
  ``case`` int32 (index into :attr:`VolumeSliceDatasource.case_table`); ``z`` int32.
* patch mode: ``image`` float32 (1, D, H, W); ``label`` uint8 (D, H, W) when ``with_label``;
  ``case`` int32; ``z``, ``y``, ``x`` int32 (patch origin in voxels).

Unlabelled data: a datasource built with ``with_label=False`` has **no** ``label`` column (the
unlabelled stream never reads label chunks). If ``with_label=True`` and some case has no label,
its rows carry ``data.labels.NO_LABEL_UINT8`` (255) everywhere, so the column stays present and
uint8; ``data.labels.loss_targets`` turns that value into the losses' ``IGNORE_LABEL``.
No string columns: case IDs travel as int32 indices into ``case_table``.

Credentials: ``storage_options`` travel inside every read task (they are pickled with it).
Prefer the AWS environment variables or an instance role, exported before ``ray.init``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from action_ray.data.labels import NO_LABEL_UINT8
from action_ray.data.patches import patch_origins
from action_ray.data.resize import IMAGE_MODES, resize_slices
from action_ray.errors import ConfigError, StoreError
from action_ray.io.normalise import NormalisationSpec, normalise_array, resolve_spec
from action_ray.store import open_store
from action_ray.store.bulk import cyclic_gc_paused

log = logging.getLogger(__name__)

#: Default output bytes per read task (see the block-size pitfall in docs/ray-notes.md §3).
DEFAULT_TASK_BYTES = 16 * 2**20
#: A small epoch is still cut into at least this many read tasks (whole cases where they fit):
#: the per-epoch shuffle permutes *blocks* and mixes rows only within a local buffer, so an
#: epoch read as one or two big tasks would feed batches of consecutive slices of the same few
#: patients — measured to cost a supervised run at 500 steps more than half its Dice.
MIN_READ_TASKS = 32

_ID_BYTES = 4  # one int32 id column


@dataclass(frozen=True)
class CaseEntry:
    """What a read task needs to know about one case; planned on the driver, shipped to tasks."""

    index: int
    case_id: str
    shape: tuple[int, int, int]
    has_label: bool
    stats: Mapping[str, float]


@dataclass(frozen=True)
class ReadUnit:
    """One contiguous range of one case's rows: slices ``[start, stop)``, or patches
    ``[start, stop)`` of the case's z-major patch-origin list (see :func:`patch_origins`)."""

    case: int
    start: int
    stop: int


@functools.lru_cache(maxsize=8)
def _open_cached(url: str, options_json: str):
    return open_store(url, storage_options=json.loads(options_json) or None)


def open_store_cached(url: str, storage_options: Mapping[str, Any] | None):
    """Open a store once per worker process (Ray reuses workers across read tasks)."""
    return _open_cached(url, json.dumps(dict(storage_options or {}), sort_keys=True))


def z_chunk_of(store, case_id: str) -> int:
    """Z extent of one stored object of a case's image, read from the array metadata (1 if unknown):
    its shard when the array is sharded (a slab of whole shards is one GET each), else its chunk.

    Only asked for cases too large for one read task, so planning a store of small cases
    costs no extra metadata reads.
    """
    getter = getattr(store, "chunks", None)
    try:
        if callable(getter):
            return max(1, int(getter(case_id)[0]))
        import zarr

        key = store.array_key(case_id, "image")
        options = getattr(store, "_storage_options", None) or None
        array = zarr.open_array(f"{store.url}/{key}", mode="r", storage_options=options) \
            if options else zarr.open_array(f"{store.url}/{key}", mode="r")
        return max(1, int((array.shards or array.chunks)[0]))
    except Exception:  # noqa: BLE001 - alignment is an optimisation; never fail planning on it
        return 1


class VolumeSliceDatasource(Datasource):
    """Rows of normalised (and resized) slices or patches of selected store cases.

    Args:
        store_url, storage_options: where the store is (local path or ``s3://``).
        case_ids: cases to read, in order; a case listed ``k`` times is read ``k`` times per
            epoch (how the small labelled stream is oversampled). ``case_table`` lists each
            distinct case once, and the ``case`` column indexes it.
        mode: ``"slice"`` (2-D rows) or ``"patch"`` (3-D rows of ``patch_size``).
        patch_size, patch_stride: (D, H, W) voxels; stride defaults to the patch size.
        with_label: include the ``label`` column (see module doc for unlabelled cases).
        rows_per_task: cap on rows per read task (tests, or to force more parallelism).
        target_task_bytes: pack units into a task until it holds this many output bytes.
        output_size: (H, W) every slice is resized to (slice mode only; None keeps native size,
            in which case all cases must share the in-plane size).
        image_interpolation: ``"bicubic"`` (the published order-3 resize) or ``"bilinear"``.
        normalisation: spec, dict or method name; default from the store metadata / modality.
    """

    def __init__(
        self,
        store_url: str,
        storage_options: Mapping[str, Any] | None,
        case_ids: Sequence[str],
        mode: str = "slice",
        patch_size: Sequence[int] | None = None,
        patch_stride: Sequence[int] | None = None,
        with_label: bool = True,
        rows_per_task: int | None = None,
        *,
        target_task_bytes: int = DEFAULT_TASK_BYTES,
        min_tasks: int = MIN_READ_TASKS,
        output_size: Sequence[int] | None = (256, 256),
        image_interpolation: str = "bicubic",
        normalisation: NormalisationSpec | Mapping[str, Any] | str | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("slice", "patch"):
            raise ConfigError(f"data mode {mode!r} must be 'slice' or 'patch'")
        if not case_ids:
            raise ConfigError("the datasource was given no cases; check the split / case list")
        if rows_per_task is not None and rows_per_task < 1:
            raise ConfigError(f"rows_per_task={rows_per_task} must be at least 1")
        self.store_url = str(store_url)
        self.storage_options = dict(storage_options or {})
        self.mode = mode
        self.with_label = bool(with_label)
        self.rows_per_task = rows_per_task
        self.target_task_bytes = int(target_task_bytes)
        self.min_tasks = max(1, int(min_tasks))
        if image_interpolation not in IMAGE_MODES:
            raise ConfigError(f"image_interpolation={image_interpolation!r} is not one of {IMAGE_MODES}")
        self.image_interpolation = image_interpolation
        if mode == "patch":
            if patch_size is None or len(patch_size) != 3:
                raise ConfigError("patch mode needs patch_size=(D, H, W)")
            self.patch_size = tuple(int(p) for p in patch_size)
            stride = patch_stride if patch_stride is not None else self.patch_size
            if len(stride) != 3 or min(stride) < 1:
                raise ConfigError(f"patch_stride={list(stride)} must be three positive ints")
            self.patch_stride = tuple(int(s) for s in stride)
            self.output_size = None
        else:
            self.patch_size = self.patch_stride = None
            self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))

        # a fresh handle on the driver, so cases ingested since the last plan are visible
        store = open_store(self.store_url, storage_options=self.storage_options or None)
        self.normalisation = resolve_spec(getattr(store, "dataset_meta", {}), normalisation)
        self.case_table: tuple[str, ...] = tuple(dict.fromkeys(case_ids))
        entries = []
        # one batch of metadata reads for every case, not one round trip per case (store.cases)
        for index, (case_id, info) in enumerate(zip(self.case_table, store.cases(self.case_table))):
            entries.append(
                CaseEntry(
                    index=index,
                    case_id=case_id,
                    shape=tuple(int(s) for s in info.shape),
                    has_label=bool(info.has_label),
                    stats=dict(info.stats or {}),
                )
            )
        self.cases: tuple[CaseEntry, ...] = tuple(entries)
        self._z_chunks: dict[str, int] = {}
        index_of = {c: i for i, c in enumerate(self.case_table)}
        self.case_sequence: tuple[int, ...] = tuple(index_of[c] for c in case_ids)
        if mode == "slice" and self.output_size is None:
            sizes = {c.shape[1:] for c in self.cases}
            if len(sizes) > 1:
                raise ConfigError(
                    f"cases have different in-plane sizes {sorted(sizes)}; set output_size "
                    "so that slices can be batched"
                )

    def _z_chunk(self, case: CaseEntry) -> int:
        if case.case_id not in self._z_chunks:
            store = open_store_cached(self.store_url, self.storage_options)
            self._z_chunks[case.case_id] = z_chunk_of(store, case.case_id)
        return self._z_chunks[case.case_id]

    # ---- sizes ---------------------------------------------------------------------------------
    def _units_in_case(self, case: CaseEntry) -> int:
        """Rows of a case: its slices, or its patches (z-major over the origin grid)."""
        if self.mode == "slice":
            return case.shape[0]
        return len(patch_origins(case.shape, self.patch_size, self.patch_stride))  # type: ignore[arg-type]

    def row_bytes(self, case: CaseEntry) -> int:
        """In-memory bytes of one output row of ``case``."""
        if self.mode == "slice":
            height, width = self.output_size or case.shape[1:]
            voxels = height * width
            ids = 2
        else:
            voxels = math.prod(self.patch_size)  # type: ignore[arg-type]
            ids = 4
        return voxels * 4 + (voxels if self.with_label else 0) + ids * _ID_BYTES

    def num_rows(self) -> int:
        """Rows per epoch (every listed case occurrence, in full)."""
        return sum(
            self._units_in_case(self.cases[i]) for i in self.case_sequence
        )

    def estimate_inmemory_data_size(self) -> int:
        return sum(
            self._units_in_case(self.cases[i]) * self.row_bytes(self.cases[i]) for i in self.case_sequence
        )

    # ---- planning ------------------------------------------------------------------------------
    def plan_tasks(self) -> list[list[ReadUnit]]:
        """Group the epoch's units into read tasks, by bytes (or ``rows_per_task``).

        A case stays whole inside one task when it fits the per-task budget (then tasks hold
        one or more whole cases); a larger case is cut into runs of about one budget: slice
        runs aligned to its z chunks (so no chunk is decoded by two tasks), or runs of its
        z-major patch list (each read is the bounding box of the run's patches).
        """
        tasks: list[list[ReadUnit]] = []
        current: list[ReadUnit] = []
        used = 0  # rows (rows_per_task given) or bytes (otherwise) already in `current`
        if self.rows_per_task is not None:
            budget = self.rows_per_task
        else:
            epoch_bytes = self.estimate_inmemory_data_size()
            budget = max(1, min(self.target_task_bytes, math.ceil(epoch_bytes / self.min_tasks)))
        for index in self.case_sequence:
            case = self.cases[index]
            steps = self._units_in_case(case)
            step_cost = 1 if self.rows_per_task is not None else self.row_bytes(case)
            max_steps = max(1, budget // step_cost)
            if steps > max_steps and self.mode == "slice":
                align = self._z_chunk(case)
                if max_steps >= align:
                    max_steps -= max_steps % align
            for start in range(0, steps, max_steps):
                stop = min(steps, start + max_steps)
                cost = (stop - start) * step_cost
                if current and used + cost > budget:
                    tasks.append(current)
                    current, used = [], 0
                current.append(ReadUnit(index, start, stop))
                used += cost
        if current:
            tasks.append(current)
        return tasks

    def unit_rows(self, unit: ReadUnit) -> int:
        return unit.stop - unit.start

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
        """Ray entry point; ``parallelism`` is ignored in favour of byte-sized tasks (module doc)."""
        read_tasks = []
        with cyclic_gc_paused():  # a few objects per case: per-case cost flat in the plan size
            for units in self.plan_tasks():
                rows = sum(self.unit_rows(u) for u in units)
                size = sum(self.unit_rows(u) * self.row_bytes(self.cases[u.case]) for u in units)
                metadata = BlockMetadata(num_rows=rows, size_bytes=int(size), input_files=None, exec_stats=None)
                read_tasks.append(
                    ReadTask(
                        functools.partial(_read_units, self._task_context(), tuple(units)),
                        metadata,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
        return read_tasks

    def _task_context(self) -> "_TaskContext":
        return _TaskContext(
            store_url=self.store_url,
            storage_options=self.storage_options,
            cases=self.cases,
            mode=self.mode,
            with_label=self.with_label,
            output_size=self.output_size,
            image_interpolation=self.image_interpolation,
            normalisation=self.normalisation,
            patch_size=self.patch_size,
            patch_stride=self.patch_stride,
        )


@dataclass(frozen=True)
class _TaskContext:
    """Everything a read task closes over (picklable; opened inside the worker)."""

    store_url: str
    storage_options: Mapping[str, Any]
    cases: tuple[CaseEntry, ...]
    mode: str
    with_label: bool
    output_size: tuple[int, int] | None
    image_interpolation: str
    normalisation: NormalisationSpec
    patch_size: tuple[int, int, int] | None
    patch_stride: tuple[int, int, int] | None


def _read_units(ctx: _TaskContext, units: Sequence[ReadUnit]) -> Iterator[Any]:
    """Read task body: one block per unit (a case's slab), built from one ranged store read.

    A unit whose chunks cannot be read (corrupt or unreachable after ingest) is left out with a
    warning naming the case and its rows, so one damaged case does not end hours of training;
    an epoch that yields no full batch still stops the run (`train.loop`).
    """
    for unit in units:
        try:
            batch = read_unit_batch(ctx, unit)
        except StoreError as exc:
            log.warning("action-ray: skipping rows %d..%d of case %s: %s", unit.start, unit.stop - 1,
                        ctx.cases[unit.case].case_id, exc)
            continue
        yield BlockAccessor.batch_to_block(batch)


def read_unit_batch(ctx: _TaskContext, unit: ReadUnit) -> dict[str, np.ndarray]:
    """The columns of one unit as NumPy arrays (the block before Arrow conversion)."""
    case = ctx.cases[unit.case]
    store = open_store_cached(ctx.store_url, ctx.storage_options)
    if ctx.mode == "slice":
        return _slice_batch(ctx, store, case, unit)
    return _patch_batch(ctx, store, case, unit)


def _read_box(ctx: _TaskContext, store, case: CaseEntry, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray | None]:
    """One ranged read of ``box``, normalised; the label as the datasource's columns need it."""
    want_label = ctx.with_label and case.has_label
    image, label = store.read_patch(case.case_id, box)
    image = normalise_array(image, ctx.normalisation, case.stats, case.case_id)
    if not ctx.with_label:
        return image, None
    if want_label:
        if label is None:
            raise StoreError(f"case {case.case_id!r} is marked labelled but its label could not be read")
        return image, np.asarray(label, dtype=np.uint8)
    return image, np.full(image.shape, NO_LABEL_UINT8, dtype=np.uint8)


def _slice_batch(ctx: _TaskContext, store, case: CaseEntry, unit: ReadUnit) -> dict[str, np.ndarray]:
    image, label = _read_box(ctx, store, case, (slice(unit.start, unit.stop), slice(None), slice(None)))
    if ctx.output_size is not None:
        image, label = resize_slices(image, label, ctx.output_size, ctx.image_interpolation)
    rows = image.shape[0]
    batch = {"image": np.ascontiguousarray(image[:, None], dtype=np.float32)}
    if label is not None:
        batch["label"] = np.ascontiguousarray(label, dtype=np.uint8)
    batch["case"] = np.full(rows, case.index, dtype=np.int32)
    batch["z"] = np.arange(unit.start, unit.stop, dtype=np.int32)
    return batch


def _pad_to(array: np.ndarray, shape: Sequence[int], value: float) -> np.ndarray:
    pads = [(0, max(0, want - have)) for have, want in zip(array.shape, shape)]
    if not any(p[1] for p in pads):
        return array
    return np.pad(array, pads, mode="constant", constant_values=value)


def _patch_batch(ctx: _TaskContext, store, case: CaseEntry, unit: ReadUnit) -> dict[str, np.ndarray]:
    assert ctx.patch_size is not None and ctx.patch_stride is not None
    pd, ph, pw = ctx.patch_size
    grid = patch_origins(case.shape, ctx.patch_size, ctx.patch_stride)[unit.start:unit.stop]
    low = np.min(grid, axis=0)
    high = np.max(grid, axis=0) + np.asarray(ctx.patch_size)  # exclusive; beyond the volume = padding
    box = tuple(slice(int(lo), int(min(hi, n))) for lo, hi, n in zip(low, high, case.shape))
    image, label = _read_box(ctx, store, case, box)  # the bounding box of this unit's patches only
    image = _pad_to(image, high - low, 0.0)
    if label is not None:
        label = _pad_to(label, high - low, 0)
    z_lo, y_lo, x_lo = (int(v) for v in low)
    images = np.empty((len(grid), 1, pd, ph, pw), dtype=np.float32)
    labels = np.empty((len(grid), pd, ph, pw), dtype=np.uint8) if label is not None else None
    for row, (z, y, x) in enumerate(grid):
        window = (slice(z - z_lo, z - z_lo + pd), slice(y - y_lo, y - y_lo + ph), slice(x - x_lo, x - x_lo + pw))
        images[row, 0] = image[window]
        if labels is not None:
            labels[row] = label[window]
    origins = np.asarray(grid, dtype=np.int32).reshape(-1, 3)
    batch = {"image": images}
    if labels is not None:
        batch["label"] = labels
    batch["case"] = np.full(len(grid), case.index, dtype=np.int32)
    batch["z"], batch["y"], batch["x"] = origins[:, 0].copy(), origins[:, 1].copy(), origins[:, 2].copy()
    return batch

