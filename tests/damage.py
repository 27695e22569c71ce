"""Damage a written store the way a disk, a person or a bucket policy could, for the tests of
what readers do about it. Slice-chunked arrays are sharded (one object holds a case's slices),
so "a slice's chunk" is a byte range inside the shard, found through the shard's index."""

from __future__ import annotations

import pathlib

import numpy as np

SHARD = ("c", "0", "0", "0")  # the one shard of a slice-chunked array (whole case in one object)


def shard_path(store_root: pathlib.Path, case_id: str, array: str = "image") -> pathlib.Path:
    return pathlib.Path(store_root, "cases", case_id, array, *SHARD)


def delete_shard(store_root: pathlib.Path, case_id: str, array: str = "image") -> None:
    """The whole array's data gone: zarr would read it back as zeros, without an error."""
    shard_path(store_root, case_id, array).unlink()


def corrupt_slice(store_root: pathlib.Path, case_id: str, z: int, array: str = "image") -> None:
    """Overwrite slice ``z``'s compressed bytes inside the shard with garbage (index intact)."""
    import zarr

    path = shard_path(store_root, case_id, array)
    n = zarr.open_array(str(path.parents[len(SHARD) - 1]), mode="r").shards[0]  # slices per shard
    data = bytearray(path.read_bytes())
    index = np.frombuffer(bytes(data[-(n * 16 + 4):-4]), dtype="<u8").reshape(n, 2)  # then a crc32c
    offset, length = (int(v) for v in index[z])
    data[offset:offset + length] = b"\x00garbage" * (length // 8) + b"\x00" * (length % 8)
    path.write_bytes(bytes(data))
