"""``np.percentile`` of a volume's tails, bit for bit, without partitioning the whole volume.

Why: ingest records the 0.5 / 99.5 percentiles of every case (the MR normalisation clips to
them). ``np.percentile`` finds them by partitioning a copy of the whole volume around six
ranks, which cost more per voxel than decompressing the source file: on a 256x256x16 volume
9 ms of a case's 40. Both ranks sit in a tail that holds about 0.5 % of the voxels, so:

1. a strided sample of about 4096 voxels (the stride a prime, so that it does not walk down
   one column of the image) gives a value ``v`` that very likely has a little more
   than ``k + 2`` voxels at or below it (above it, for the upper tail);
2. one comparison pass keeps the voxels ``<= v``: they are exactly the smallest ``c`` voxels of
   the volume, ties included, so if ``c > k + 1`` their ranks ``k`` and ``k + 1`` are the volume's;
   otherwise (an unlucky sample) the volume is partitioned as numpy would;
3. the two order statistics are interpolated with numpy's own expression for the ``linear``
   method, in the same dtypes, so the result is the same float as ``np.percentile``'s
   (the tests compare them bit for bit over many shapes, ties and distributions).

Volumes with NaN, non-float dtypes and small volumes go straight to ``np.percentile``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Below this many voxels a full partition is as fast as sampling.
SMALL = 8192
SAMPLE = 4096


def tail_percentiles(volume: np.ndarray, percentiles: Sequence[float]) -> tuple[float, ...]:
    """``tuple(np.percentile(volume, percentiles))`` for percentiles in the outer 10 % tails."""
    flat = volume.ravel()
    if flat.size < SMALL or flat.dtype not in (np.float32, np.float64) or \
            any(0.1 < p / 100 < 0.9 for p in percentiles):
        return tuple(float(v) for v in np.percentile(volume, list(percentiles)))
    n = flat.size
    quantiles = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    virtual = (n - 1) * quantiles                      # numpy's 'linear' virtual index
    previous = np.floor(virtual).astype(np.intp)
    following = np.minimum(previous + 1, n - 1)
    ranks = sorted({int(r) for r in previous} | {int(r) for r in following})
    values = _order_statistics(flat, ranks)
    if values is None:  # NaN present: numpy's answer (NaN), not ours
        return tuple(float(v) for v in np.percentile(volume, list(percentiles)))
    a = np.array([values[int(r)] for r in previous], dtype=flat.dtype)
    b = np.array([values[int(r)] for r in following], dtype=flat.dtype)
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    return tuple(float(v) for v in _numpy_lerp(a, b, gamma))


def _numpy_lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's ``_lerp`` (the 'linear' method), same operations, same dtypes."""
    diff = b - a
    out = np.add(a, diff * t)
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5, casting="unsafe", dtype=type(out.dtype))
    return out


def _order_statistics(flat: np.ndarray, ranks: list[int]) -> dict[int, float] | None:
    """The values of the given 0-based ranks of ``flat`` (sorted ascending); None if NaN."""
    n = flat.size
    if np.isnan(flat.max()):  # max is NaN exactly when some voxel is
        return None
    sample = np.sort(flat[:: _prime_at_least(max(2, n // SAMPLE))])
    m = sample.size
    out: dict[int, float] = {}
    low = [r for r in ranks if r < n // 2]
    high = [r for r in ranks if r >= n // 2]
    if low:
        cut = sample[_sample_index(max(low) + 1, n, m)]
        tail = flat[flat <= cut]
        if tail.size > max(low):
            tail.partition(low)
            out.update({r: tail[r] for r in low})
    if high:
        cut = sample[m - 1 - _sample_index(n - min(high), n, m)]
        tail = flat[flat >= cut]
        offset = n - tail.size  # rank of the tail's smallest voxel in the whole volume
        if offset <= min(high):
            local = [r - offset for r in high]
            tail.partition(local)
            out.update({r: tail[r - offset] for r in high})
    missing = [r for r in ranks if r not in out]
    if missing:  # the sample missed: what np.percentile does, for these ranks
        part = flat.copy()
        part.partition(missing)
        out.update({r: part[r] for r in missing})
    return out


def _sample_index(count: int, n: int, m: int) -> int:
    """Index in the sorted sample whose value likely has ``count`` or more voxels below it.

    The sample's fraction below a value is binomial around the volume's; aiming 5 standard
    deviations (plus two samples) beyond ``count / n`` misses about once in a million draws,
    and a miss only costs the full partition.
    """
    p = count / n
    aim = p + 5 * math.sqrt(p * (1 - p) / m) + 2 / m
    return min(m - 1, math.ceil(aim * m))


def _prime_at_least(k: int) -> int:
    while any(k % d == 0 for d in range(2, math.isqrt(k) + 1)):
        k += 1
    return k
