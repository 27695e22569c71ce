"""LiTS-like abdominal CT phantoms: HU volumes with labels 0 background, 1 liver, 2 tumour.

Design (docs/phantoms.md, section 2b): the liver is a smooth union of two lobe ellipsoids,
warped by a random smooth displacement field and cut by the lung bases; lesions are
ellipsoids with an ill-defined (logistic) margin; cysts and the gallbladder are deliberate
look-alikes. The image is rendered on three through-slice samples (boxcar) and blurred with
an in-plane PSF; the label is evaluated at the voxel centre, so margins are ambiguous exactly
where a reader would hesitate.

Coordinates are millimetres on a tensor grid ``(z, y, x)``: z grows towards the feet (slice 0
is the most cranial), y towards the back, x towards the image right (patient left, so the
liver sits on the image left as in radiological display). Organs are painted in their
bounding boxes only, which keeps a 128x128x48 volume well under a CPU-second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from action_ray.synth.fields import ellipsoid_distance, smooth_field, smooth_min

LABELS: dict[int, str] = {0: "background", 1: "liver", 2: "tumour"}
N_SLICES = 48
_BOXCAR = 3  # through-slice samples per slice
_AIR = -1000.0


@dataclass(frozen=True)
class LiverCase:
    """One synthetic CT volume, arrays ``(Z, Y, X)``; ``spacing`` is ``(dz, dy, dx)`` in mm.

    ``image`` is float32 Hounsfield units; ``label`` uint8 with 0 background, 1 liver (hepatic
    vessels and cysts included), 2 tumour. ``n_tumours`` counts lesions drawn (some may be
    tiny or cut by the scan range).
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    n_tumours: int


class _Grid:
    """Tensor grid of sample coordinates plus bounding-box slicing for cheap organ painting."""

    def __init__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        self.z, self.y, self.x = z, y, x
        self.shape = (len(z), len(y), len(x))

    def box(self, centre: tuple[float, float, float], half: tuple[float, float, float]) -> tuple[slice, slice, slice]:
        """Index slices of the grid points within ``centre +- half`` (z, y, x), possibly empty."""
        out = []
        for axis, c, h in zip((self.z, self.y, self.x), centre, half):
            lo = int(np.searchsorted(axis, c - h, side="left"))
            hi = int(np.searchsorted(axis, c + h, side="right"))
            out.append(slice(lo, max(lo, hi)))
        return tuple(out)

    def coords(self, box: tuple[slice, slice, slice], centre=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinates of ``box`` relative to ``centre``."""
        f32 = np.float32
        zs, ys, xs = box
        return (
            (self.z[zs] - f32(centre[0]))[:, None, None],
            (self.y[ys] - f32(centre[1]))[None, :, None],
            (self.x[xs] - f32(centre[2]))[None, None, :],
        )


def _paint_ellipsoid(hu: np.ndarray, grid: _Grid, centre, semi, value: float) -> np.ndarray | None:
    """Set ``hu`` to ``value`` inside an axis-aligned ellipsoid; returns its mask in its box."""
    box = grid.box(centre, semi)
    if any(b.stop <= b.start for b in box):
        return None
    z, y, x = grid.coords(box, centre)
    inside = ellipsoid_distance(z, y, x, semi) < 0
    hu[box][inside] = value
    return inside


class _Subject:
    """Per-subject draws; the order of draws is part of the seed contract."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731 - local shorthand
        n = lambda mu, sd: float(rng.normal(mu, sd))  # noqa: E731
        self.size = int(size)
        self.dz = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
        self.pixel = u(320, 420) / size
        extent = N_SLICES * self.dz
        # Body: ellipse, fat and muscle layers.
        self.body = (u(135, 175), u(100, 130))
        self.subcut = u(8, 30)
        self.muscle = u(8, 15)
        # Liver: right + left lobe, per-axis scale and shift, warp, dome.
        self.scale = tuple(u(0.85, 1.15) for _ in range(3))  # z, y, x
        self.shift = tuple(n(0, 7) for _ in range(3))
        self.left_lobe = 75 * u(0.4, 1.1)
        self.warp_amplitude = u(5, 14)
        self.dome_top = u(0.05, 0.3) * extent + 25.0
        self.recess = (u(15, 35), u(10, 25))  # lung base deeper posteriorly / laterally (mm)
        self.gallbladder = (u(0.6, 1.2), n(0, 10), n(0, 10))
        # Hepatic vessel contrast and lesions.
        self.vessel_contrast = u(20, 70)
        self.hu = {
            "liver": n(105, 15), "muscle": n(55, 6), "fat": n(-100, 10), "aorta": u(140, 220),
            "kidney": u(140, 200), "bone": u(500, 900), "spleen": n(110, 15), "ivc": u(100, 150),
            "gallbladder": u(0, 20), "bowel": u(10, 45), "lung": u(-880, -820),
        }
        self.noise_sd = u(6, 18)
        has_tumours = rng.random() >= 0.12
        count = min(12, 1 + int(rng.poisson(u(0.3, 4.0)))) if has_tumours else 0
        median = u(10, 20)
        self.tumours = []
        for _ in range(count):
            radius = float(np.clip(median * np.exp(rng.normal(0, 0.6)), 3, 45))
            axes = tuple(radius * u(0.8, 1.25) for _ in range(3))
            hyper = rng.random() < 0.15
            delta = u(20, 50) if hyper else u(-80, -20)
            rim = 20.0 if rng.random() < 0.3 else 0.0
            self.tumours.append((axes, delta, rim, rng.random()))
        n_cysts = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
        self.cysts = [(u(4, 14), u(0, 15), rng.random()) for _ in range(n_cysts)]
        self.kidney_z = u(30, 70)
        self.stomach = (u(35, 55), u(30, 45), u(35, 50), u(0.2, 0.5))


def _liver_distance(s: _Subject, grid: _Grid, rng: np.random.Generator, centre: tuple[float, float, float]) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Warped signed distance (mm) to the liver inside its bounding box, and that box."""
    f32 = np.float32
    sz, sy, sx = s.scale
    right = (80 * sz, 85 * sy, 80 * sx)
    left = (40 * sz, 40 * sy, s.left_lobe * sx)
    left_centre = (-20.0 * sz, -35.0 * sy, 70.0 * sx)  # relative to the right lobe: cranial, anterior, to the patient's left
    reach = 14.0 + s.warp_amplitude * 2
    half = (right[0] + reach, right[1] + reach, (right[2] + left_centre[2] + left[2]) / 2 + reach)
    box_centre = (centre[0], centre[1], centre[2] + (left_centre[2] + left[2] - right[2]) / 2)
    box = grid.box(box_centre, half)
    z, y, x = grid.coords(box, centre)
    axes = (grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])
    cell = 2 * max(half) / 12  # ~12 lattice cells across the organ
    amp = f32(s.warp_amplitude / 2)
    wz, wy, wx = (amp * smooth_field(rng, axes, cell) for _ in range(3))
    z, y, x = z + wz, y + wy, x + wx
    d_right = ellipsoid_distance(z, y, x, right)
    d_left = ellipsoid_distance(z - f32(left_centre[0]), y - f32(left_centre[1]), x - f32(left_centre[2]), left)
    return smooth_min(d_right, d_left, 20.0), box


def _render(s: _Subject, grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU on the sample grid, liver mask and tumour mask (both on the sample grid)."""
    f32 = np.float32
    h = s.hu
    Z = grid.z[:, None, None]
    Y = grid.y[None, :, None]
    X = grid.x[None, None, :]
    A, B = s.body
    hu = np.full(grid.shape, _AIR, dtype=np.float32)
    rho = np.hypot(X / f32(A), Y / f32(B))  # (1, Y, X): the body is a prism along z
    depth_in = (1 - rho) * f32(np.sqrt(A * B))
    body = np.broadcast_to(rho < 1, grid.shape)
    hu[body] = h["fat"]
    wall = s.subcut + s.muscle
    hu[np.broadcast_to((depth_in > s.subcut) & (depth_in <= wall), grid.shape)] = h["muscle"]
    cavity2d = depth_in > wall
    # Ribs: bright dots in the muscle layer whose angle drifts with z (oblique course).
    angle = np.arctan2(Y / f32(B), X / f32(A))
    ribs = (np.abs(depth_in - f32(s.subcut + 0.5 * s.muscle)) < 5) & (
        np.cos(f32(9) * angle + Z / f32(25.0)) > 0.8
    ) & (Y < f32(0.6 * B))
    hu[ribs] = h["bone"]
    cavity = np.broadcast_to(cavity2d, grid.shape)
    hu[cavity] = h["fat"]  # intra-abdominal fat; organs are painted over it

    # Bowel loops: random-field tubes with gas pockets, in the lower and left abdomen.
    tube = np.abs(smooth_field(rng, (grid.z, grid.y, grid.x), 14.0)) < 0.35
    region = smooth_field(rng, (grid.z, grid.y, grid.x), 40.0) > -0.3
    gas = smooth_field(rng, (grid.z, grid.y, grid.x), 10.0) > 1.3
    bowel = cavity & tube & region & (Y < f32(0.35 * B))
    hu[bowel] = h["bowel"]
    hu[bowel & gas] = _AIR + 100

    # Diaphragm: the lung base reaches deeper posteriorly and laterally; lungs fill the cavity
    # above it, except the heart resting on the left dome.
    dome = (f32(s.dome_top) + f32(s.recess[0]) * np.clip(Y / f32(B), 0, 1) ** 2
            + f32(s.recess[1]) * (X / f32(A)) ** 2)  # (1, Y, X)
    lung_full = cavity & (Z < dome)
    hu[lung_full] = h["lung"]
    heart = (np.hypot((X - f32(35.0)) / f32(60.0), (Y + f32(0.2 * B)) / f32(45.0)) < 1) & lung_full
    hu[heart] = 40.0

    # Spine, psoas, aorta, IVC.
    inner_b = B - wall
    spine_y = inner_b - 22.0
    spine_r = 20.0
    spine = np.broadcast_to(np.hypot(X, Y - f32(spine_y)), grid.shape)
    psoas_r = np.clip((Z - f32(grid.z[0])) / f32(8.0), 4.0, 22.0)
    for side in (-1, 1):
        psoas = (np.hypot((X - f32(side * 38.0)) / psoas_r, (Y - f32(spine_y)) / f32(18.0)) < 1) & ~lung_full
        hu[psoas] = h["muscle"]
    hu[spine < spine_r] = h["bone"]
    hu[spine < spine_r - 3] = 250.0
    aorta_c = (18.0, spine_y - spine_r - 14)
    hu[np.broadcast_to(np.hypot(X - f32(aorta_c[0]), Y - f32(aorta_c[1])) < 12, grid.shape)] = h["aorta"]

    # Liver placement: right lobe against the right abdominal wall.
    sz, sy, sx = s.scale
    liver_centre = (
        s.dome_top + 80 * sz + s.shift[0],
        -0.1 * B + s.shift[1],
        -(A - wall - 78 * sx) + s.shift[2],
    )
    liver_d, lbox = _liver_distance(s, grid, rng, liver_centre)
    z, y, x = grid.coords(lbox)
    liver = (liver_d < 0) & ~lung_full[lbox] & cavity[lbox]
    # Intrahepatic IVC and gallbladder are carved out (label 0).
    ivc = np.hypot(x + f32(22.0), y - f32(aorta_c[1] + 4)) < 11
    gb_scale, gb_dx, gb_dy = s.gallbladder
    gb_centre = (liver_centre[0] + 55 * sz, liver_centre[1] - 45 * sy + gb_dy, liver_centre[2] + 40 * sx + gb_dx)
    gallbladder = ellipsoid_distance(z - f32(gb_centre[0]), y - f32(gb_centre[1]), x - f32(gb_centre[2]),
                                     (35 * gb_scale, 16 * gb_scale, 16 * gb_scale)) < 0

    liver_hu = np.full(liver.shape, h["liver"], dtype=np.float32)
    # Hepatic vessels: the intersection of two random-field zero sets is a network of tubes.
    axes = (grid.z[lbox[0]], grid.y[lbox[1]], grid.x[lbox[2]])
    vessels = (np.abs(smooth_field(rng, axes, 22.0)) < 0.12) & (np.abs(smooth_field(rng, axes, 22.0)) < 0.5) & (liver_d < -8)
    liver_hu[vessels] += f32(s.vessel_contrast)
    liver_mask = liver & ~ivc & ~gallbladder

    # Tumours: centres >= 0.5 r inside the liver, logistic margin, heterogeneity, optional rim.
    tumour = np.zeros(liver.shape, dtype=bool)
    hetero = smooth_field(rng, axes, 6.0)
    candidates = np.flatnonzero(liver_mask)
    for axes_mm, delta, rim, pick in s.tumours:
        r = min(axes_mm)
        deep = candidates[liver_d.ravel()[candidates] < -0.5 * r] if candidates.size else candidates
        if deep.size == 0:
            continue
        iz, iy, ix = np.unravel_index(deep[int(pick * deep.size)], liver.shape)
        c = (float(z[iz, 0, 0]), float(y[0, iy, 0]), float(x[0, 0, ix]))
        # The lesion's box (margin included), in liver-box indices.
        tb = grid.box(c, tuple(a + 6.0 for a in axes_mm))
        tb = tuple(slice(max(t.start - l.start, 0), max(t.stop - l.start, 0)) for t, l in zip(tb, lbox))
        tz, ty, tx = z[tb[0]], y[:, tb[1]], x[:, :, tb[2]]
        dist = ellipsoid_distance(tz - f32(c[0]), ty - f32(c[1]), tx - f32(c[2]), axes_mm)
        weight = 1 / (1 + np.exp(dist / f32(1.5)))  # ill-defined margin
        change = f32(delta) * (1 + f32(0.35) * hetero[tb]) * weight
        if rim:
            change += f32(rim) * np.exp(-(dist / f32(2.0)) ** 2)
        liver_hu[tb] += change
        tumour[tb] |= dist < 0
    # Cysts: water density, sharp, labelled liver (a deliberate tumour look-alike).
    for radius, value, pick in s.cysts:
        deep = candidates[liver_d.ravel()[candidates] < -radius] if candidates.size else candidates
        if deep.size == 0:
            continue
        iz, iy, ix = np.unravel_index(deep[int(pick * deep.size)], liver.shape)
        cyst = np.hypot(np.hypot(z - z[iz, 0, 0], y - y[0, iy, 0]), x - x[0, 0, ix]) < radius
        liver_hu[cyst] = value
        tumour &= ~cyst
    tumour &= liver_mask

    region = hu[lbox]
    region[liver_mask] = liver_hu[liver_mask]
    region[ivc & liver] = h["ivc"]
    region[gallbladder & (liver_d < 12) & cavity[lbox]] = h["gallbladder"]
    liver_full = np.zeros(grid.shape, dtype=bool)
    liver_full[lbox] = liver_mask
    tumour_full = np.zeros(grid.shape, dtype=bool)
    tumour_full[lbox] = tumour

    # Spleen (liver-like HU, label 0), kidneys, stomach with gas: painted where the liver is not.
    other = hu.copy()
    spleen_c = (s.dome_top + 45, 0.25 * B, A - wall - 35)
    _paint_ellipsoid(other, grid, spleen_c, (50, 45, 25), h["spleen"])
    for side in (-1, 1):
        kc = (liver_centre[0] + s.kidney_z, spine_y - 15, side * 62.0)
        _paint_ellipsoid(other, grid, kc, (50, 24, 28), h["kidney"])
        _paint_ellipsoid(other, grid, kc, (30, 10, 10), 10.0)
    st_a, st_b, st_c, st_gas = s.stomach
    st_centre = (s.dome_top + 55, -0.35 * B, 0.35 * A)
    inside = _paint_ellipsoid(other, grid, st_centre, (st_c, st_b, st_a), 25.0)
    if inside is not None:
        box = grid.box(st_centre, (st_c, st_b, st_a))
        _, yy, _ = grid.coords(box, st_centre)
        other[box][inside & np.broadcast_to(yy < f32(-st_b * (1 - 2 * st_gas)), inside.shape)] = _AIR + 50
    keep = liver_full | lung_full | ~cavity | (spine < spine_r)
    hu = np.where(keep, hu, other)
    return hu, liver_full, tumour_full


def liver_case(seed: int, size: int = 128) -> LiverCase:
    """Generate one synthetic LiTS-like CT volume (48 slices), deterministic in ``seed``.

    ``size`` is the in-plane matrix (128 -> 2.5-3.3 mm pixels; 256 -> LiTS-like pixels).
    """
    if int(size) < 16:
        raise ValueError(f"liver_case: size must be >= 16, got {size!r}")
    rng = np.random.default_rng(seed)
    s = _Subject(rng, int(size))
    half = (s.size - 1) / 2
    xy = ((np.arange(s.size) - half) * s.pixel).astype(np.float32)
    offsets = (np.arange(_BOXCAR) - (_BOXCAR - 1) / 2) * s.dz / _BOXCAR
    z = ((np.arange(N_SLICES) * s.dz)[:, None] + offsets[None, :]).ravel().astype(np.float32)
    grid = _Grid(z, xy, xy)
    hu, liver, tumour = _render(s, grid, rng)
    image = hu.reshape(N_SLICES, _BOXCAR, s.size, s.size).mean(axis=1, dtype=np.float32)
    image = ndimage.gaussian_filter(image, sigma=(0, 0.7, 0.7), mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), sigma=(0, 0.8, 0.8))
    noise *= np.float32(s.noise_sd / max(float(noise.std()), 1e-6))
    centre = (_BOXCAR - 1) // 2
    label = np.zeros(image.shape, dtype=np.uint8)
    label[liver[centre::_BOXCAR]] = 1
    label[tumour[centre::_BOXCAR]] = 2
    return LiverCase(
        image=(image + noise).astype(np.float32),
        label=label,
        spacing=(float(s.dz), float(s.pixel), float(s.pixel)),
        n_tumours=len(s.tumours),
    )
