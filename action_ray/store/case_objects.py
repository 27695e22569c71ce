"""A case's Zarr objects (metadata documents and encoded chunks), built in memory.

Why not let zarr write the case: a write through zarr awaits one store call per chunk and per
document, and hands every chunk's compression to a thread of its own (``asyncio.to_thread``),
each a hop through zarr's event loop; for the small chunks of slice chunking those hops, not
the compression, were most of a case's write time, and creating the two array objects cost
another millisecond each. Here:

* zarr still defines the format: it builds each array's metadata document and codec chain
  (once per shape, dtype, chunking and codec: cached, since a collection repeats a handful of
  shapes); group documents are written as one line of JSON (:func:`group_document` says why);
* the chunks are cut and compressed in the calling thread with the very codecs named in that
  document (``numcodecs.Blosc``, which releases the GIL while it compresses), so two ingest
  threads compress in parallel and no event loop is involved;
* the store pushes the finished objects in one batch (:meth:`VolumeStore.write_case`).

A test checks that every array byte equals what zarr writes when it creates the same array in a
store itself, for slice and patch chunking, including a padded edge chunk and a skipped empty
one, and that zarr reads every group back with the attributes that were written.

Memory: the encoded case is at most the size of its arrays (chunks are compressed), and a
writer already holds the arrays, so peak memory per case stays within about twice the volume.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

ROOT_DOCUMENT = "zarr.json"
#: zarr's default chunk key encoding: "c" then the chunk's grid index joined by "/".
CHUNK_PREFIX = "c"
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


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
    """The ``zarr.json`` of a group with these attributes, on one line.

    zarr itself writes documents indented (``json_indent``), which sends ``json.dumps`` down
    its pure-Python encoder: for a case's 5 KB of attributes (affine, statistics, sources, OME
    multiscales) that was 1.8 ms per case with the GIL held, more than compressing the case's
    chunks. Without indentation the C encoder writes the same JSON in a tenth of that, and
    every Zarr reader parses it the same way (a test reads the groups back through zarr).
    ``allow_nan`` matches zarr, which writes NaN attributes as bare ``NaN``.
    """
    document = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    return json.dumps(document, allow_nan=True).encode()


@dataclass(frozen=True)
class ArrayTemplate:
    """What every array of one shape/dtype/chunking/codec shares: its document and encoder."""

    document: bytes
    encode: Callable[[np.ndarray], bytes]   # one full-shape, C-contiguous chunk -> stored bytes


def _chunk_encoder(codecs: tuple) -> Callable[[np.ndarray], bytes]:
    """The codec chain of an array document as one function, with numcodecs doing the work.

    Supports what action-ray writes (the ``bytes`` codec, then Blosc); anything else is a
    programming error here, not a user's, so it fails loudly instead of writing other bytes.
    """
    from numcodecs import Blosc
    from zarr.codecs import BloscCodec, BytesCodec

    first, *compressors = codecs
    if not isinstance(first, BytesCodec) or (first.endian is not None and first.endian.value != sys.byteorder):
        raise NotImplementedError(f"case_objects writes native-endian 'bytes' chunks only, not {first!r}")
    steps = []
    for codec in compressors:
        if not isinstance(codec, BloscCodec):
            raise NotImplementedError(f"case_objects encodes Blosc compressors only, not {codec!r}")
        steps.append(Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=_BLOSC_SHUFFLE[codec.shuffle.value],
                           blocksize=codec.blocksize, typesize=codec.typesize).encode)

    def encode(chunk: np.ndarray) -> bytes:
        out: Any = chunk
        for step in steps:
            out = step(out)
        return bytes(out) if steps else chunk.tobytes()

    return encode


@lru_cache(maxsize=64)
def _template(shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...], compressors_json: str,
              fill_value: float | int, axes: tuple[str, ...]) -> ArrayTemplate:
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    compressors = tuple(zarr.registry.get_codec_class(c["name"]).from_dict(c) for c in json.loads(compressors_json))
    metadata = zarr.create_array(zarr.storage.MemoryStore(), shape=shape, dtype=dtype, chunks=chunks,
                                 compressors=compressors, dimension_names=axes, fill_value=fill_value).metadata
    document = metadata.to_buffer_dict(default_buffer_prototype())[ROOT_DOCUMENT].to_bytes()
    return ArrayTemplate(document, _chunk_encoder(tuple(metadata.codecs)))


def array_template(plan: ArrayPlan, chunks: tuple[int, ...], axes: tuple[str, ...]) -> ArrayTemplate:
    """The (cached) document and chunk encoder zarr defines for ``plan``'s array."""
    compressors_json = json.dumps([codec.to_dict() for codec in plan.compressors], sort_keys=True)
    return _template(tuple(plan.data.shape), plan.data.dtype.str, tuple(chunks), compressors_json,
                     plan.fill_value, tuple(axes))


def encode_chunks(data: np.ndarray, chunks: tuple[int, ...], fill_value: float | int,
                  encode: Callable[[np.ndarray], bytes]) -> dict[str, bytes]:
    """Every stored chunk of ``data``: ``{"c/i/j/k": bytes}``, as zarr's regular grid stores it.

    Edge chunks are padded with the fill value to the full chunk shape, and a chunk holding only
    the fill value is not stored (zarr's ``write_empty_chunks=False``, its default).
    """
    grid = [range(0, size, step) for size, step in zip(data.shape, chunks)]
    out: dict[str, bytes] = {}
    for origin in itertools.product(*grid):
        box = tuple(slice(start, start + step) for start, step in zip(origin, chunks))
        part = data[box]
        if not part.any() if fill_value == 0 else bool(np.all(part == fill_value)):
            continue
        if part.shape != tuple(chunks):
            full = np.full(chunks, fill_value, dtype=data.dtype)
            full[tuple(slice(0, n) for n in part.shape)] = part
            part = full
        index = "/".join(str(start // step) for start, step in zip(origin, chunks))
        out[f"{CHUNK_PREFIX}/{index}"] = encode(np.ascontiguousarray(part))
    return out


def build_case_objects(groups: dict[str, dict[str, Any]], arrays: list[ArrayPlan],
                       chunks: tuple[int, ...], axes: tuple[str, ...]) -> CaseObjects:
    """Documents of ``groups`` (path -> attributes, ``""`` is the case itself) and of ``arrays``,
    and every stored chunk of the arrays, as bytes keyed relative to the case.

    ``stored_chunks`` counts what was stored per array (all-fill chunks are not).
    """
    objects: dict[str, bytes] = {}
    for path, attributes in groups.items():
        objects[f"{path}/{ROOT_DOCUMENT}" if path else ROOT_DOCUMENT] = group_document(attributes)
    stored: dict[str, int] = {}
    for plan in arrays:
        template = array_template(plan, chunks, axes)
        objects[f"{plan.key}/{ROOT_DOCUMENT}"] = template.document
        encoded = encode_chunks(plan.data, chunks, plan.fill_value, template.encode)
        stored[plan.key] = len(encoded)
        objects.update({f"{plan.key}/{name}": value for name, value in encoded.items()})
    return CaseObjects(objects, stored)
