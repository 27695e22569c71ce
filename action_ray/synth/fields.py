"""Random smooth fields and small shape helpers shared by the phantom generators.

Everything here is cheap on purpose: a phantom volume must cost well under a CPU-second, so a
smooth field is a coarse lattice of Gaussian coefficients interpolated with separable Gaussian
weights (three small matrix products on a tensor grid) instead of filtering a full-size noise
volume. All grids are float32; scalars stay Python floats so they never upcast a grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def lattice_weights(coords_mm: np.ndarray, cell_mm: float) -> np.ndarray:
    """Interpolation weights from a 1-D lattice with spacing ``cell_mm`` onto ``coords_mm``.

    The lattice covers the coordinates with one spare node on each side, so the field has no
    edge fall-off. Returns ``(len(coords_mm), n_nodes)`` float32 Gaussian weights (width = one
    cell), which give a field about as smooth as a cubic B-spline at a fraction of the cost.
    """
    coords = np.asarray(coords_mm, dtype=np.float32).ravel()
    lo, hi = float(coords.min()), float(coords.max())
    n_nodes = int(np.ceil((hi - lo) / cell_mm)) + 3
    nodes = (lo - cell_mm + cell_mm * np.arange(n_nodes)).astype(np.float32)
    offsets = (coords[:, None] - nodes[None, :]) / np.float32(cell_mm)
    return np.exp(np.float32(-0.5) * offsets * offsets)


def smooth_field(
    rng: np.random.Generator,
    axes_mm: Sequence[np.ndarray],
    cell_mm: float | Sequence[float],
) -> np.ndarray:
    """A zero-mean, unit-std smooth random field on the tensor grid spanned by ``axes_mm``.

    ``axes_mm`` holds one 1-D coordinate array (mm) per output axis, e.g. ``(z, y, x)``;
    ``cell_mm`` is the correlation length, one value or one per axis. Returns a float32 array of
    shape ``tuple(len(a) for a in axes_mm)``. Deterministic in ``rng``.
    """
    cells = [float(cell_mm)] * len(axes_mm) if np.isscalar(cell_mm) else [float(c) for c in cell_mm]
    if len(cells) != len(axes_mm):
        raise ValueError(f"smooth_field: got {len(axes_mm)} axes but {len(cells)} cell sizes")
    weights = [lattice_weights(axis, cell) for axis, cell in zip(axes_mm, cells)]
    field = rng.standard_normal([w.shape[1] for w in weights]).astype(np.float32)
    for w in weights:
        # Contract the leading lattice axis; the new grid axis is appended at the end, so after
        # one pass per axis the output axes are back in the input order.
        field = np.tensordot(field, w, axes=([0], [1]))
    field -= field.mean(dtype=np.float64)
    std = float(field.std(dtype=np.float64))
    if std > 0:
        field /= np.float32(std)
    return field


@dataclass(frozen=True)
class AngularModes:
    """A smooth periodic perturbation ``sum_k a_k cos(k*theta + phi_k)`` of a closed contour.

    Used for endocardial shape, wall thickness and fat thickness, which vary around the
    circumference but must join up at 2*pi.
    """

    orders: tuple[int, ...]
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    @classmethod
    def draw(cls, rng: np.random.Generator, orders: Sequence[int], sd: float) -> "AngularModes":
        orders = tuple(int(k) for k in orders)
        amplitudes = tuple(float(a) for a in rng.normal(0.0, sd, len(orders)))
        phases = tuple(float(p) for p in rng.uniform(0.0, 2 * np.pi, len(orders)))
        return cls(orders, amplitudes, phases)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        out = np.zeros(theta.shape, dtype=np.float32)
        for k, a, p in zip(self.orders, self.amplitudes, self.phases):
            out += np.float32(a) * np.cos(np.float32(k) * theta + np.float32(p))
        return out


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two signed distances (mm), blending over ``k`` mm.

    The union of two lobes then has a rounded crease instead of a sharp notch, like an organ.
    """
    k32 = np.float32(k)
    h = np.clip(np.float32(0.5) + np.float32(0.5) * (b - a) / k32, 0.0, 1.0)
    return b + (a - b) * h - k32 * h * (np.float32(1.0) - h)


def ellipsoid_distance(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, semi_axes: Sequence[float]
) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid.

    ``(|p/axes| - 1) * min(axes)`` is exact on spheres and a good-enough distance near the
    surface of moderately elongated ellipsoids, which is all that margins and shells need.
    """
    ax, ay, az = (np.float32(s) for s in semi_axes)
    norm = np.sqrt((x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2)
    return (norm - np.float32(1.0)) * np.float32(min(float(ax), float(ay), float(az)))


def box_downsample(grid: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks over the last two axes: the supersampled-image mean."""
    *lead, h, w = grid.shape
    if h % factor or w % factor:
        raise ValueError(f"box_downsample: shape {grid.shape} is not a multiple of {factor}")
    blocks = grid.reshape(*lead, h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float32)
