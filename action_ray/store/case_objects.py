"""A case's Zarr objects (metadata documents and encoded chunks), built in memory by zarr.

Why in memory: writing a case straight into a ``LocalStore`` or ``FsspecStore`` costs zarr one
awaited store call per chunk and per document, each a hop through zarr's event loop (and on S3
a round trip); for the small chunks of slice chunking that overhead was three quarters of a
case's write time. Here zarr itself creates the nodes and encodes the chunks into a plain dict
(a ``MemoryStore``), so the bytes are exactly what zarr would have written; the store then
pushes the finished objects in one batch (:meth:`VolumeStore.write_case`).

Memory: the encoded case is at most the size of its arrays (chunks are compressed), and a
writer already holds the arrays, so peak memory per case stays within about twice the volume.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Chunks zarr encodes per batch (its default is 1, i.e. one event-loop round per chunk); a
#: slice-chunked case has one chunk per slice, so a whole array of a typical volume is one batch.
ENCODE_BATCH = 64
ROOT_DOCUMENT = "zarr.json"
#: zarr reads the batch size from its global config when an array object is created; the lock
#: keeps two writer threads from interleaving their set/restore of that one global value.
_CONFIG_LOCK = threading.Lock()


@dataclass(frozen=True)
class ArrayPlan:
    """One array of the case: where it goes and how it is chunked and compressed."""

    key: str                   # relative to the case, e.g. "image" or "labels/label/0"
    data: np.ndarray
    compressors: tuple
    fill_value: float | int


@dataclass
class CaseObjects:
    """Every object of one case, keyed relative to the case's prefix."""

    objects: dict[str, bytes]
    stored_chunks: dict[str, int]  # array key -> chunks written (all-fill chunks are not stored)

    @property
    def root_document(self) -> bytes:
        return self.objects[ROOT_DOCUMENT]

    def without_root_document(self) -> dict[str, bytes]:
        return {key: value for key, value in self.objects.items() if key != ROOT_DOCUMENT}


def group_document(attributes: dict[str, Any]) -> bytes:
    """The ``zarr.json`` of a group with these attributes, serialised by zarr."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    return GroupMetadata(attributes=attributes).to_buffer_dict(default_buffer_prototype())[ROOT_DOCUMENT].to_bytes()


def build_case_objects(groups: dict[str, dict[str, Any]], arrays: list[ArrayPlan],
                       chunks: tuple[int, ...], axes: tuple[str, ...]) -> CaseObjects:
    """Create ``groups`` (path -> attributes, ``""`` is the case itself) and ``arrays`` in memory.

    Returns the documents and chunks as bytes. zarr does not store a chunk that holds only the
    fill value, so ``stored_chunks`` counts what was actually encoded per array.
    """
    import zarr
    from zarr.core.group import GroupMetadata

    objects: dict[str, Any] = {}
    scratch = zarr.storage.MemoryStore(store_dict=objects)
    nodes: dict[str, Any] = {path: GroupMetadata(attributes=attrs) for path, attrs in groups.items()}
    for plan in arrays:
        nodes[plan.key] = zarr.create_array(
            zarr.storage.MemoryStore(), shape=plan.data.shape, dtype=plan.data.dtype, chunks=chunks,
            compressors=plan.compressors, dimension_names=axes, fill_value=plan.fill_value).metadata
    with _CONFIG_LOCK, zarr.config.set({"codec_pipeline.batch_size": ENCODE_BATCH}):
        created = dict(zarr.create_hierarchy(store=scratch, nodes=nodes))
    for plan in arrays:
        created[plan.key][...] = plan.data
    encoded = {key: value.to_bytes() for key, value in objects.items()}
    stored = {plan.key: sum(key.startswith(f"{plan.key}/c/") for key in encoded) for plan in arrays}
    return CaseObjects(encoded, stored)
