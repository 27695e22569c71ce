"""The grid of 3-D patch origins over a volume, shared by the patch reader and sliding-window code.

Pure Python (no Ray, no torch), so inference code can use the same grid as training reads.
"""

from __future__ import annotations

from typing import Sequence


def axis_origins(length: int, patch: int, stride: int) -> list[int]:
    """Patch origins covering ``[0, length)``: every ``stride``, plus one flush with the end.

    A volume shorter than the patch gets one origin at 0 (the patch is zero-padded).
    """
    if length <= patch:
        return [0]
    origins = list(range(0, length - patch + 1, stride))
    if origins[-1] != length - patch:
        origins.append(length - patch)
    return origins


def patch_origins(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int]]:
    """All patch origins (z, y, x) of a volume, z-major, so a contiguous range is a z slab."""
    zs, ys, xs = (axis_origins(n, p, s) for n, p, s in zip(shape, patch, stride))
    return [(z, y, x) for z in zs for y in ys for x in xs]
