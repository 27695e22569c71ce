"""Chunk shapes and compressors, chosen for how training reads the store.

2-D training reads axial slices, so ``"slice"`` chunking stores each slice as one chunk, and
the slices of a case as inner chunks of one shard per array (up to 16 MiB; :func:`shard_shape`
says why): a read task's whole-case slab is one GET, a single slice an index read plus a range
read. 3-D training reads cubes, so ``"patch"`` chunking stores (16, 64, 64) cubes, unsharded.
The compressor was picked by measurement on phantom-like float32 MR volumes (``action-ray bench
codecs``; table in docs/store.md).
"""

from __future__ import annotations

from zarr.codecs import BloscCodec, BloscShuffle

from action_ray.errors import StoreError

CHUNKINGS = ("slice", "patch")
#: (z, y, x) cube read by 3-D training; 16*64*64 float32 = 256 KiB per chunk before compression.
PATCH_CHUNK = (16, 64, 64)

#: Image codec: Blosc byte-shuffle + zstd level 1. Measured (docs/store.md): the best ratio on
#: float MR within 2 %, within 6 % on integer-valued CT, at 2-4x the encode speed of levels 3-5.
IMAGE_CODEC_NAME = "blosc-zstd1-shuffle"
#: Label codec: label maps are long runs of few values; bit-shuffle + zstd 3 compressed them
#: best (48x vs 35x for plain zstd) at several hundred MB/s.
LABEL_CODEC_NAME = "blosc-zstd3-bitshuffle"


def image_compressors() -> tuple:
    return (BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle, typesize=4),)


def label_compressors() -> tuple:
    return (BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle, typesize=1),)


#: Largest shard of a slice-chunked array, before compression: a shard holds as many whole
#: slices as fit (at least one), so an ACDC frame (10 x 256 x 216 float32, 2.2 MB) is one object
#: and a 512 x 512 CT slab of 16 slices is one. It matches the data layer's 16 MiB read task, so
#: a read task's slab is one shard: one GET, where a slab of slice objects was one GET per slice.
SHARD_BYTES = 16 * 2**20
#: The image's itemsize (float32) sets the shard extent; the label uses the same extent so both
#: arrays of a case split at the same slices.
SHARD_ITEMSIZE = 4


def shard_shape(shape: tuple[int, int, int], chunking: str) -> tuple[int, int, int] | None:
    """Shard shape of an array written with ``chunking``; None when it is not sharded.

    Slice chunking stores its slices as inner chunks of ``(n, Y, X)`` shards (``n`` slices, at
    most :data:`SHARD_BYTES` raw): one object per array for a typical case instead of one per
    slice, which is what made ingest slow (a folder and a file per slice on disk, a PUT per slice
    on S3). Patch chunking is not sharded: its cubes are already 256 KiB objects, and 3-D
    training reads scattered patches, for which a shard would add an index read to each.
    """
    if chunking != "slice":
        return None
    z, y, x = shape
    return (max(1, min(z, SHARD_BYTES // (y * x * SHARD_ITEMSIZE))), y, x)


def chunk_shape(shape: tuple[int, int, int], chunking: str) -> tuple[int, int, int]:
    """Chunk shape for an array of ``shape`` (Z, Y, X) under a chunking scheme.

    Chunks never exceed the array, so a small phantom is not padded to a 64-voxel cube.
    """
    z, y, x = shape
    if chunking == "slice":
        return (1, y, x)
    if chunking == "patch":
        return (min(z, PATCH_CHUNK[0]), min(y, PATCH_CHUNK[1]), min(x, PATCH_CHUNK[2]))
    raise StoreError(f"unknown chunking {chunking!r}: use one of {CHUNKINGS}")
