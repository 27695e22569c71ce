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
import math
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
class ShardLayout:
    """How a sharded array packs its inner chunks: shard shape, chunk order, index encoder."""

    shape: tuple[int, ...]
    chunks_per_shard: tuple[int, ...]
    order: tuple[tuple[int, ...], ...]          # inner chunks in the order zarr lays them out
    encode_index: Callable[[np.ndarray], bytes]  # (chunks_per_shard..., 2) uint64 -> stored bytes


@dataclass(frozen=True)
class ArrayTemplate:
    """What every array of one shape/dtype/chunking/codec shares: its document and encoders."""

    document: bytes
    encode: Callable[[np.ndarray], bytes]   # one full-shape, C-contiguous (inner) chunk -> bytes
    shard: ShardLayout | None = None


def _chunk_encoder(codecs: tuple) -> Callable[[np.ndarray], bytes]:
    """The codec chain of an array document as one function, with numcodecs doing the work.

    Supports what action-ray writes (the ``bytes`` codec, then Blosc); anything else is a
    programming error here, not a user's, so it fails loudly instead of writing other bytes.
    """
    from numcodecs import Blosc
    from zarr.codecs import BloscCodec

    _check_native_bytes(codecs[0])
    steps = []
    for codec in codecs[1:]:
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


def _check_native_bytes(codec: Any) -> None:
    from zarr.codecs import BytesCodec

    if not isinstance(codec, BytesCodec) or (codec.endian is not None and codec.endian.value != sys.byteorder):
        raise NotImplementedError(f"case_objects writes native-endian 'bytes' chunks only, not {codec!r}")


def _index_encoder(codecs: tuple) -> Callable[[np.ndarray], bytes]:
    """A shard index's codec chain (``bytes`` then ``crc32c``, zarr's default) as one function."""
    import google_crc32c  # zarr's own dependency for this codec
    from zarr.codecs import Crc32cCodec

    _check_native_bytes(codecs[0])
    if len(codecs) > 2 or (len(codecs) == 2 and not isinstance(codecs[1], Crc32cCodec)):
        raise NotImplementedError(f"case_objects writes shard indexes as bytes + crc32c only, not {codecs!r}")
    with_checksum = len(codecs) == 2

    def encode(index: np.ndarray) -> bytes:
        data = np.ascontiguousarray(index, dtype=np.uint64).tobytes()
        if with_checksum:
            data += np.array([google_crc32c.value(data)], dtype=np.uint32).tobytes()
        return data

    return encode


@lru_cache(maxsize=64)
def _template(shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...], shards: tuple[int, ...] | None,
              compressors_json: str, fill_value: float | int, axes: tuple[str, ...]) -> ArrayTemplate:
    import zarr
    from zarr.codecs import ShardingCodec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.indexing import morton_order_iter

    compressors = tuple(zarr.registry.get_codec_class(c["name"]).from_dict(c) for c in json.loads(compressors_json))
    metadata = zarr.create_array(zarr.storage.MemoryStore(), shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                                 compressors=compressors, dimension_names=axes, fill_value=fill_value).metadata
    document = metadata.to_buffer_dict(default_buffer_prototype())[ROOT_DOCUMENT].to_bytes()
    codecs = tuple(metadata.codecs)
    if shards is None:
        return ArrayTemplate(document, _chunk_encoder(codecs))
    (sharding,) = codecs
    if not isinstance(sharding, ShardingCodec) or sharding.index_location.value != "end":
        raise NotImplementedError(f"case_objects writes shards with their index at the end, not {sharding!r}")
    per_shard = tuple(s // c for s, c in zip(shards, chunks))
    layout = ShardLayout(tuple(shards), per_shard, tuple(morton_order_iter(per_shard)),
                         _index_encoder(tuple(sharding.index_codecs)))
    return ArrayTemplate(document, _chunk_encoder(tuple(sharding.codecs)), layout)


def array_template(plan: ArrayPlan, chunks: tuple[int, ...], shards: tuple[int, ...] | None,
                   axes: tuple[str, ...]) -> ArrayTemplate:
    """The (cached) document and encoders zarr defines for ``plan``'s array."""
    compressors_json = json.dumps([codec.to_dict() for codec in plan.compressors], sort_keys=True)
    return _template(tuple(plan.data.shape), plan.data.dtype.str, tuple(chunks),
                     None if shards is None else tuple(shards), compressors_json, plan.fill_value, tuple(axes))


def encode_chunks(data: np.ndarray, chunks: tuple[int, ...], fill_value: float | int,
                  encode: Callable[[np.ndarray], bytes]) -> dict[tuple[int, ...], bytes]:
    """Every stored chunk of ``data`` by grid index, as zarr's regular grid encodes it.

    Edge chunks are padded with the fill value to the full chunk shape, and a chunk holding only
    the fill value is not stored (zarr's ``write_empty_chunks=False``, its default).
    """
    grid = [range(0, size, step) for size, step in zip(data.shape, chunks)]
    out: dict[tuple[int, ...], bytes] = {}
    for origin in itertools.product(*grid):
        box = tuple(slice(start, start + step) for start, step in zip(origin, chunks))
        part = data[box]
        if not part.any() if fill_value == 0 else bool(np.all(part == fill_value)):
            continue
        if part.shape != tuple(chunks):
            full = np.full(chunks, fill_value, dtype=data.dtype)
            full[tuple(slice(0, n) for n in part.shape)] = part
            part = full
        out[tuple(start // step for start, step in zip(origin, chunks))] = encode(np.ascontiguousarray(part))
    return out


def pack_shards(chunks: dict[tuple[int, ...], bytes], layout: ShardLayout) -> dict[tuple[int, ...], bytes]:
    """Inner chunks -> shard objects by shard grid index: the chunks in zarr's (Morton) order,
    then the index of (offset, length) per inner chunk, ``2**64 - 1`` for the absent ones.
    A shard whose chunks are all absent is not stored, as zarr does not store it."""
    by_shard: dict[tuple[int, ...], dict[tuple[int, ...], bytes]] = {}
    for index, value in chunks.items():
        shard = tuple(i // n for i, n in zip(index, layout.chunks_per_shard))
        by_shard.setdefault(shard, {})[tuple(i % n for i, n in zip(index, layout.chunks_per_shard))] = value
    out: dict[tuple[int, ...], bytes] = {}
    for shard, inner in by_shard.items():
        table = np.full((*layout.chunks_per_shard, 2), np.iinfo(np.uint64).max, dtype=np.uint64)
        parts, offset = [], 0
        for local in layout.order:
            value = inner.get(local)
            if value:
                table[local] = (offset, len(value))
                parts.append(value)
                offset += len(value)
        parts.append(layout.encode_index(table))
        out[shard] = b"".join(parts)
    return out


def chunk_key(index: tuple[int, ...]) -> str:
    """zarr's default chunk key: ``c/i/j/k``."""
    return "/".join((CHUNK_PREFIX, *(str(i) for i in index)))


def build_case_objects(groups: dict[str, dict[str, Any]], arrays: list[ArrayPlan], chunks: tuple[int, ...],
                       axes: tuple[str, ...], shards: tuple[int, ...] | None = None) -> CaseObjects:
    """Documents of ``groups`` (path -> attributes, ``""`` is the case itself) and of ``arrays``,
    and every stored chunk (or shard) of the arrays, as bytes keyed relative to the case.

    ``stored_chunks`` counts per array what zarr's ``nchunks_initialized`` will report: stored
    chunks, or for a sharded array its stored shards times the chunks each shard holds.
    """
    objects: dict[str, bytes] = {}
    for path, attributes in groups.items():
        objects[f"{path}/{ROOT_DOCUMENT}" if path else ROOT_DOCUMENT] = group_document(attributes)
    stored: dict[str, int] = {}
    for plan in arrays:
        template = array_template(plan, chunks, shards, axes)
        objects[f"{plan.key}/{ROOT_DOCUMENT}"] = template.document
        encoded = encode_chunks(plan.data, chunks, plan.fill_value, template.encode)
        if template.shard is None:
            stored[plan.key] = len(encoded)
        else:
            encoded = pack_shards(encoded, template.shard)
            stored[plan.key] = len(encoded) * math.prod(template.shard.chunks_per_shard)
        objects.update({f"{plan.key}/{chunk_key(index)}": value for index, value in encoded.items()})
    return CaseObjects(objects, stored)
