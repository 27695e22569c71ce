"""ACDC-like cardiac short-axis cine phantoms: ED and ES volumes with labels 0 bg/1 RV/2 MYO/3 LV.

Design (docs/phantoms.md, section 2a): every structure is an implicit function of millimetre
coordinates. The *image* is rendered on a 2x2 in-plane supersampled grid with a 5-sample
Gaussian through-slice profile and averaged, which gives physical partial volume; the *label*
is evaluated once at each voxel centre on the slice centre, like a contour drawn on the
acquired slice. Every nuisance factor (pose, FOV, slice spacing, contrast, SNR, coil bias,
k-space cut-off, breath-hold shifts, pathology) is drawn per subject, so a few labelled
subjects cannot cover the distribution and unlabelled ones can.

Coordinates: arrays are ``(Z, Y, X)``; in-plane ``x`` grows to the image right (patient left)
and ``y`` downwards (posterior); ``d`` is the depth in mm along the LV long axis, 0 at the ED
base plane and growing towards the apex. The slice stack is perpendicular to the long axis.

Speed: the thorax is drawn once per slice in 2-D (it barely changes within a slice), and the
heart with the full through-slice profile only inside a crop around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from action_ray.synth.fields import AngularModes, box_downsample, smooth_field

#: ACDC's pathology groups, spelled as in ACDC's Info.cfg ("RV" = abnormal right ventricle).
GROUPS: tuple[str, ...] = ("NOR", "MINF", "DCM", "HCM", "RV")
LABELS: dict[int, str] = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}

_SUPERSAMPLE = 2  # in-plane supersampling factor of the image
_PROFILE_SAMPLES = 5  # through-slice samples over 1.2x the slice thickness
# Heart tissue codes used while painting; 0 means "whatever the thorax has here".
_NONE, _LV_BLOOD, _MYO, _RV_BLOOD, _FAT = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class CardiacCase:
    """One synthetic patient: ED and ES volumes, shape ``(Z, Y, X)``.

    Images are float32 in arbitrary MR units (random global gain, so models must normalise);
    labels are uint8 with 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity (papillary
    muscles and trabeculae included, as in ACDC). ``spacing`` is ``(dz, dy, dx)`` in mm, in
    array-axis order. Frame numbers are 1-based, as in ACDC file names.
    """

    ed_image: np.ndarray
    ed_label: np.ndarray
    es_image: np.ndarray
    es_label: np.ndarray
    spacing: tuple[float, float, float]
    ed_frame: int
    es_frame: int
    nb_frames: int
    group: str
    height_cm: float
    weight_kg: float


@dataclass(frozen=True)
class _Frame:
    """Ventricular geometry of one cardiac phase (ED or ES); lengths in mm."""

    cavity_radius: float  # LV endocardial radius at the widest level
    wall: float  # mean LV wall thickness
    length: float  # base-to-apex cavity length
    base_shift: float  # how far the base plane has descended below the ED base
    rv_radial: float  # scale of the RV radial semi-axis (RV ejection)
    rv_length: float  # RV cavity length (mm) below its top


def _profile_formula(u: np.ndarray, peak: float) -> np.ndarray:
    """Radius factor of a truncated prolate along its axis: 1 at ``peak``, 0.89 at 0, 0 at 1.

    The apical half uses a cubic rather than a quadratic fall-off: a blunter, more
    ventricle-like apex that brings the cavity volumes into the clinical range.
    """
    below = 1.0 - ((peak - u) / (2.2 * peak)) ** 2
    above = 1.0 - np.abs((u - peak) / (1.0 - peak)) ** 3
    return np.sqrt(np.clip(np.where(u < peak, below, above), 0.0, 1.0)).astype(np.float32)


_TABLE_LO, _TABLE_STEP, _TABLE_SIZE = -1.0, 1.0 / 512, 1537  # u in [-1, 2]
_PROFILE_TABLES: dict[float, np.ndarray] = {}


def _profile(u: np.ndarray, peak: float = 0.25) -> np.ndarray:
    """:func:`_profile_formula` by table look-up (1/512 steps): the heart evaluates it on
    millions of points per volume, and a look-up costs a third of the formula."""
    table = _PROFILE_TABLES.get(peak)
    if table is None:
        table = _profile_formula(_TABLE_LO + _TABLE_STEP * np.arange(_TABLE_SIZE), peak)
        _PROFILE_TABLES[peak] = table
    index = (u - np.float32(_TABLE_LO)) * np.float32(1 / _TABLE_STEP) + np.float32(0.5)
    np.clip(index, 0, _TABLE_SIZE - 1, out=index)
    return table[index.astype(np.intp)]


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return c * x + s * y, -s * x + c * y


class _Subject:
    """All per-subject random draws; the order of draws is part of the seed contract."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731 - local shorthand
        n = lambda mu, sd: float(rng.normal(mu, sd))  # noqa: E731

        self.group = GROUPS[int(rng.integers(len(GROUPS)))]
        g = self.group
        radius = {"NOR": (24, 2.5), "MINF": (28, 3), "DCM": (32, 3), "HCM": (21, 2.5), "RV": (24, 2.5)}[g]
        wall = {"NOR": (8.5, 1), "MINF": (8.5, 1), "DCM": (6.5, 1), "HCM": (15, 2.5), "RV": (8.5, 1)}[g]
        ef = {"NOR": (0.55, 0.70), "MINF": (0.20, 0.40), "DCM": (0.10, 0.35), "HCM": (0.60, 0.80), "RV": (0.50, 0.65)}[g]
        R = max(14.0, n(*radius))
        T = max(4.0, n(*wall))
        ejection = u(*ef)
        L = max(50.0, n(72, 7)) * (1.1 if g == "DCM" else 1.0)
        self.ecc = u(1.0, 1.15)
        self.endo_modes = AngularModes.draw(rng, (2, 3, 4), 0.035)
        self.wall_modes = AngularModes.draw(rng, (2, 3), 0.10)
        # MINF: a regional thinning bump (infarct), von Mises in angle, up to 50 % of the wall.
        self.infarct = (u(0.3, 0.5), u(0, 2 * np.pi), u(2, 6)) if g == "MINF" else (0.0, 0.0, 1.0)
        self.papillary = [(u(0, 2 * np.pi), u(0.12, 0.22)) for _ in range(2)]
        self.papillary[1] = (self.papillary[0][0] + u(1.6, 2.6), self.papillary[1][1])
        self.trabeculae = (u(0.5, 2.0), int(rng.integers(10, 19)), u(0, 2 * np.pi))

        # RV: ellipse beside the LV, minus the LV epicardium -> crescent. Angle pi+0.25 puts it
        # on the image left and slightly anterior, as on a standard SAX view.
        rv_scale = u(1.35, 1.7) if g == "RV" else 1.0
        rv_ef = u(0.2, 0.4) if g == "RV" else u(0.45, 0.6)
        self.rv_angle = np.pi + 0.25 + n(0, 0.15)
        outer = R + T
        self.rv_offset = u(0.55, 0.8) * outer
        self.rv_tangential = u(1.15, 1.45) * outer * rv_scale
        self.rv_radial = u(0.65, 0.95) * outer * rv_scale
        rv_len = u(0.65, 0.85) * L + 6.0
        self.rv_free_wall = u(2.5, 4.0)

        # Base and the structures above it (labelled background, as in ACDC).
        self.base_tilt = (n(0, 0.15), n(0, 0.15))
        self.atrium_radius = u(0.8, 1.0) * R
        self.aorta = (u(11, 15), u(-0.3, 0.3))  # radius, angle jitter
        self.pulmonary_radius = u(10, 13)
        self.fat_thickness = u(1, 6)
        self.fat_modes = AngularModes.draw(rng, (1, 2, 3, 5), 0.35)

        # ED -> ES: smaller cavity, constant myocardial area, shorter axis, descending base.
        R_es = R * (1 - ejection) ** 0.45
        T_es = float(np.sqrt((R + T) ** 2 - R**2 + R_es**2) - R_es)
        self.frames = {
            "ED": _Frame(R, T, L, 0.0, 1.0, rv_len),
            "ES": _Frame(R_es, T_es, 0.88 * L, 0.12 * L, (1 - rv_ef) ** 0.5, 0.88 * rv_len),
        }

        # Pose: heart centre and in-plane angle; small long-axis tilt against the slice normal.
        self.heart_centre = (n(0, 10), n(0, 10))
        self.heart_angle = float(np.deg2rad(u(-15, 15)))
        self.axis_drift = (n(0, 0.08), n(0, 0.08))

        # Thorax.
        self.body_axes = (u(125, 165), u(90, 118))
        self.body_angle = float(np.deg2rad(u(-20, 20)))
        self.body_offset = (-u(10, 35), u(10, 30))  # body centre relative to the heart
        self.subcut_fat = (u(5, 12), u(0, 13))  # base thickness, angular variation
        self.subcut_modes = AngularModes.draw(rng, (1, 2, 3), 1.0)
        self.chest_wall = u(12, 28)
        self.paraspinal = u(45, 65)
        self.spine_radius = u(14, 18)
        self.aorta_desc_radius = u(10, 14)
        self.diaphragm_depth = u(0.4, 0.9) * L

        # Contrast relative to LV blood = 1 (bSSFP-like).
        self.contrast = {
            "rv_blood": u(0.8, 1.05), "myo": u(0.22, 0.36), "fat": u(0.7, 1.0),
            "lung": u(0.02, 0.08), "liver": u(0.25, 0.40), "muscle": u(0.2, 0.32),
            "marrow": u(0.45, 0.7), "stomach": u(0.4, 0.9), "aorta": u(0.75, 1.0),
        }

        # Acquisition.
        self.size = int(size)
        self.pixel = u(270, 360) / size
        self.thickness = u(5, 8)
        # ACDC spacing is 5-10 mm: a large gap on a thick slice is capped at 10 mm.
        self.spacing = min(10.0, self.thickness + float(rng.choice([0.0, 1.0, 2.0, 4.0])))
        first = -u(0.2, 1.0) * self.spacing
        apex = L + 0.6 * T
        n_slices = int(np.floor((apex - first) / self.spacing)) + 2
        self.n_slices = int(np.clip(n_slices, 6, 18))
        self.slice_depths = (first + self.spacing * np.arange(self.n_slices)).astype(np.float32)
        self.breath_shifts = rng.normal(0.0, u(0.0, 2.0), (self.n_slices, 2)).astype(np.float32)
        self.coils = [(u(0, 2 * np.pi), u(1.0, 1.3), u(-30, L + 30)) for _ in range(int(rng.integers(2, 5)))]
        self.coil_reach = u(0.5, 0.9) * self.body_axes[1]
        self.bias_exponent = u(0.2, 0.7)
        self.phase_axis = int(rng.integers(1, 3))  # phase-encode along y (1) or x (2)
        self.kspace_fraction = u(0.55, 0.85)
        self.snr = u(8, 25)
        self.gain = float(np.exp(u(np.log(50), np.log(2000))))

        # Metadata written to Info.cfg.
        self.nb_frames = int(rng.integers(12, 36))
        self.ed_frame = 1
        self.es_frame = int(round(self.nb_frames * u(0.3, 0.45))) + 1
        self.height_cm = round(float(np.clip(n(170, 9), 145, 200)), 1)
        self.weight_kg = round(float(np.clip(n(78, 15), 45, 140)), 1)


def _heart(s: _Subject, fr: _Frame, u: np.ndarray, v: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue codes and labels of the heart at heart-local points (mm).

    ``u, v``: in-plane coordinates around the LV centre, ``(n, 1, H, W)``; ``d``: depths,
    ``(n, S, 1, 1)`` (S through-slice samples). Everything that depends only on the in-plane
    position (angles, Fourier modes, RV frame) is computed once per slice, and only the
    depth-dependent radii on the full ``(n, S, H, W)`` grid; both outputs have that shape (uint8).
    """
    f32 = np.float32
    # In-plane quantities, (n, 1, H, W).
    sq = f32(np.sqrt(s.ecc))
    ue, ve = u / sq, v * sq
    r = np.hypot(ue, ve)
    theta = np.arctan2(ve, ue)
    plane = f32(fr.base_shift) + f32(s.base_tilt[0]) * u + f32(s.base_tilt[1]) * v
    endo_factor = 1 + s.endo_modes(theta)
    amp, centre, kappa = s.infarct
    wall_factor = 1 + s.wall_modes(theta)
    if amp:
        wall_factor *= 1 - f32(amp) * np.exp(f32(kappa) * (np.cos(theta - f32(centre)) - 1))
    trab_width, trab_count, trab_phase = s.trabeculae
    trab_pattern = np.sin(f32(trab_count) * theta + f32(trab_phase) + 2 * np.sin(3 * theta)) > 0.3
    fat_w = f32(s.fat_thickness) * np.clip(1 + s.fat_modes(theta), 0.2, 2.0)
    ca, sa = f32(np.cos(s.rv_angle)), f32(np.sin(s.rv_angle))
    pu, pv = u - f32(s.rv_offset) * ca, v - f32(s.rv_offset) * sa
    radial, tangential = pu * ca + pv * sa, -pu * sa + pv * ca
    b = f32(s.rv_radial * fr.rv_radial)
    a = f32(s.rv_tangential)
    rv_norm = np.hypot(radial / b, tangential / a)
    rv_scale = f32(np.sqrt(float(a * b)))
    ao_radius, ao_jitter = s.aorta
    ao_angle = -np.pi / 2 - 0.6 + ao_jitter
    ao_at = 0.55 * (fr.cavity_radius + fr.wall)
    ao_dist = np.hypot(u - f32(ao_at * np.cos(ao_angle)), v - f32(ao_at * np.sin(ao_angle)))
    pa_dist = np.hypot(radial - f32(0.3) * b, tangential + f32(0.55) * a)
    # Papillary muscles are vertical columns: placed from the endocardium at the slice centre.
    slice_rel = (d.mean(axis=1, keepdims=True) - f32(fr.base_shift)) / f32(fr.length)
    slice_endo = f32(fr.cavity_radius) * _profile(slice_rel)
    papillary = np.zeros(r.shape, dtype=bool)
    for angle, frac in s.papillary:
        radius = f32(frac * fr.cavity_radius)
        at = slice_endo - radius * f32(1.1)
        dist = np.hypot(ue - at * f32(np.cos(angle)), ve - at * f32(np.sin(angle)))
        papillary |= dist < radius
    papillary &= (slice_rel > 0.3) & (slice_rel < 0.8)

    # Depth-dependent quantities, (n, S, H, W).
    depth = d - plane
    below_base = depth >= 0
    above = ~below_base
    # LV: endocardium with Fourier modes; wall from a longer prolate (apex cap 0.6 T).
    endo_mean = f32(fr.cavity_radius) * _profile(depth / f32(fr.length))
    epi_mean = f32(fr.cavity_radius + fr.wall) * _profile(depth / f32(fr.length + 0.6 * fr.wall))
    endo = endo_mean * endo_factor
    epi = endo + np.maximum(epi_mean - endo_mean, 0) * wall_factor
    lv = below_base & (r < endo)
    myo = below_base & (r < epi) & ~lv
    trabeculae = lv & (r > endo - f32(trab_width)) & trab_pattern

    # RV: ellipse beside the LV minus the LV epicardium (+1 mm) -> crescent; free wall outside.
    rv_depth = (depth + f32(6.0)) / f32(fr.rv_length)
    rv_extent = np.where(rv_depth >= 0, _profile(rv_depth, peak=0.2), f32(0.0))
    rv_dist = (rv_norm - rv_extent) * rv_scale  # ~ mm outside the RV blood pool
    rv_present = rv_extent > 0
    outside_lv = r >= epi + f32(1.0)
    rv = (rv_dist < 0) & outside_lv & rv_present
    rv_wall = (rv_dist >= 0) & (rv_dist < f32(s.rv_free_wall)) & outside_lv & rv_present

    # Above the base: left atrium, aortic root, right atrium, pulmonary artery (label 0).
    atrium = above & (r < f32(s.atrium_radius))
    atrium_wall = above & (r < f32(s.atrium_radius + 2.5)) & ~atrium
    aorta = above & (ao_dist < f32(ao_radius))
    aorta_wall = above & (ao_dist < f32(ao_radius + 2.0)) & ~aorta
    right_above = rv_depth < 0
    ra_norm = rv_norm / f32(0.9)
    right_atrium = right_above & (ra_norm < 1)
    right_atrium_wall = right_above & (ra_norm < 1 + f32(2.5) / rv_scale) & ~right_atrium
    pulmonary = (rv_depth < 0.05) & (pa_dist < f32(s.pulmonary_radius))

    # Epicardial / pericardial fat: a shell of varying thickness around everything.
    fat = ((r < epi + fat_w) & (depth > -2)) | ((rv_dist < f32(s.rv_free_wall) + fat_w) & rv_present)
    fat |= above & (r < f32(s.atrium_radius + 2.5) + fat_w)

    tissue = np.zeros(depth.shape, dtype=np.uint8)
    tissue[fat] = _FAT
    tissue[rv_wall | atrium_wall | aorta_wall | right_atrium_wall] = _MYO
    tissue[right_atrium | pulmonary] = _RV_BLOOD
    tissue[atrium | aorta] = _LV_BLOOD
    tissue[rv] = _RV_BLOOD
    tissue[myo] = _MYO
    tissue[lv] = _LV_BLOOD
    tissue[trabeculae | (papillary & lv)] = _MYO

    label = np.zeros(depth.shape, dtype=np.uint8)
    label[rv & ~pulmonary] = 1
    label[myo] = 2
    label[lv] = 3
    return tissue, label


def _thorax(s: _Subject, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensity of the thorax without the heart, ``(n_slices, len(y), len(x))`` float32.

    ``x`` and ``y`` are the supersampled pixel-centre coordinates (mm, image frame).
    """
    f32 = np.float32
    c = s.contrast
    hx, hy = s.heart_centre
    bx = hx + s.body_offset[0] * np.cos(s.body_angle) - s.body_offset[1] * np.sin(s.body_angle)
    by = hy + s.body_offset[0] * np.sin(s.body_angle) + s.body_offset[1] * np.cos(s.body_angle)
    bs, bt = _rotate(x[None, :] - f32(bx), y[:, None] - f32(by), s.body_angle)  # t: posterior
    A, B = s.body_axes
    rho = np.hypot(bs / f32(A), bt / f32(B))
    psi = np.arctan2(bt / f32(B), bs / f32(A))
    depth_in = (1 - rho) * f32(np.sqrt(A * B))  # ~ mm below the skin
    fat_base, fat_var = s.subcut_fat
    subcut = f32(fat_base) + f32(fat_var) * np.clip(0.5 + 0.5 * s.subcut_modes(psi), 0, 1)
    posterior = np.clip(np.sin(psi), 0, 1) ** 3
    muscle = f32(s.chest_wall) + f32(s.paraspinal) * posterior
    body = rho < 1
    cavity = depth_in > subcut + muscle

    out = np.zeros(rho.shape, dtype=np.float32)
    out[body] = c["fat"]
    out[body & (depth_in > subcut)] = c["muscle"]
    out[cavity] = c["lung"]
    spine_t = B - fat_base - s.paraspinal * 0.55
    spine = np.hypot(bs, bt - f32(spine_t))
    out[spine < s.spine_radius] = 0.08  # cortical bone is dark on MR
    out[spine < s.spine_radius - 2.5] = c["marrow"]
    ao = np.hypot(bs - f32(22.0), bt - f32(spine_t - s.spine_radius - s.aorta_desc_radius - 4))
    out[ao < s.aorta_desc_radius] = c["aorta"]

    n = s.n_slices
    thorax = np.repeat(out[None], n, axis=0)
    # Lung vessels: the rare highs of a fine random field, only in the lungs.
    vessels = smooth_field(rng, (s.slice_depths, y, x), (s.spacing, 4.0, 4.0)) > 2.3
    lung = np.broadcast_to(cavity, thorax.shape) & (thorax == f32(c["lung"]))
    thorax[lung & vessels] = f32(0.45)
    # Diaphragm dome: liver (image bottom-left) and stomach (bottom-right) rise into the cavity.
    cav_b = B - fat_base - s.chest_wall
    for k, depth in enumerate(s.slice_depths):
        rise = float(np.clip((depth - s.diaphragm_depth) / (0.5 * s.frames["ED"].length), 0, 1.5))
        if rise <= 0:
            continue
        for side, value in ((-1, c["liver"]), (1, c["stomach"])):
            dome = np.hypot((bs - f32(side * 0.45 * A)) / f32(0.55 * A), (bt - f32(cav_b)) / f32(0.9 * B))
            thorax[k][cavity & (dome < rise) & (spine >= s.spine_radius)] = value
    return thorax


def _heart_reach(s: _Subject) -> float:
    """Radius (mm) around the heart centre outside which no heart tissue can appear."""
    outer = s.frames["ED"].cavity_radius + s.frames["ED"].wall
    reach = max(1.25 * outer * np.sqrt(s.ecc), s.rv_offset + max(s.rv_tangential, s.rv_radial))
    # Free wall, atria, fat, then the largest per-slice displacement (axis drift + breath hold).
    drift = float(np.hypot(*s.axis_drift)) * float(np.abs(s.slice_depths).max())
    shift = float(np.hypot(s.breath_shifts[:, 0], s.breath_shifts[:, 1]).max())
    return reach + 12.0 + 2 * s.fat_thickness + drift + shift + 4.0


def _render_frame(s: _Subject, name: str, thorax: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free image ``(Z, Y, X)`` and label of one phase, before acquisition effects."""
    f32 = np.float32
    fr = s.frames[name]
    ss = _SUPERSAMPLE
    size = s.size
    hx, hy = s.heart_centre
    reach = _heart_reach(s)
    # Even-aligned crop in supersampled pixels so that it maps onto whole voxels.
    lo_x = max(0, (int(np.searchsorted(xs, hx - reach)) // ss) * ss)
    hi_x = min(size * ss, -(-int(np.searchsorted(xs, hx + reach)) // ss) * ss)
    lo_y = max(0, (int(np.searchsorted(ys, hy - reach)) // ss) * ss)
    hi_y = min(size * ss, -(-int(np.searchsorted(ys, hy + reach)) // ss) * ss)

    # Through-slice profile: 5 samples over 1.2x thickness, Gaussian with FWHM = thickness.
    offsets = np.linspace(-0.6, 0.6, _PROFILE_SAMPLES) * s.thickness
    weights = np.exp(-0.5 * (offsets / (s.thickness / 2.355)) ** 2)
    weights = (weights / weights.sum()).astype(np.float32)
    depths = (s.slice_depths[:, None] + offsets[None, :].astype(np.float32))[:, :, None, None]

    def local(xv: np.ndarray, yv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heart-local in-plane coordinates ``(n, 1, H, W)``: breath-hold shift + axis drift."""
        shift = s.breath_shifts + s.slice_depths[:, None] * np.asarray(s.axis_drift, dtype=np.float32)
        px = xv[None, None, None, :] - f32(hx) - shift[:, 0, None, None, None]
        py = yv[None, None, :, None] - f32(hy) - shift[:, 1, None, None, None]
        return _rotate(px, py, s.heart_angle)

    u, v = local(xs[lo_x:hi_x], ys[lo_y:hi_y])
    tissue, _ = _heart(s, fr, u, v, depths)
    c = s.contrast
    lut = np.array([0.0, 1.0, c["myo"], c["rv_blood"], c["fat"]], dtype=np.float32)
    background = thorax[:, None, lo_y:hi_y, lo_x:hi_x]
    samples = np.where(tissue == _NONE, background, lut[tissue])
    image_ss = thorax.copy()
    image_ss[:, lo_y:hi_y, lo_x:hi_x] = np.tensordot(samples, weights, axes=([1], [0]))
    image = box_downsample(image_ss, ss)

    # Label: voxel centres on the slice centre.
    xv = xs.reshape(size, ss).mean(axis=1)[lo_x // ss:hi_x // ss]
    yv = ys.reshape(size, ss).mean(axis=1)[lo_y // ss:hi_y // ss]
    centre = s.slice_depths[:, None, None, None]
    u, v = local(xv, yv)
    _, label_crop = _heart(s, fr, u, v, centre)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[:, lo_y // ss:hi_y // ss, lo_x // ss:hi_x // ss] = label_crop[:, 0]
    return image, label


def _acquire(s: _Subject, clean: np.ndarray, texture: np.ndarray, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture, coil bias, k-space truncation, complex noise -> Rician magnitude, global gain."""
    img = clean * texture * bias
    spectrum = np.fft.fft(img, axis=s.phase_axis)
    freqs = np.abs(np.fft.fftfreq(img.shape[s.phase_axis])).astype(np.float32)
    keep = (freqs <= 0.5 * s.kspace_fraction).astype(np.float32)
    shape = [1, 1, 1]
    shape[s.phase_axis] = -1
    spectrum *= keep.reshape(shape)
    complex_img = np.fft.ifft(spectrum, axis=s.phase_axis).astype(np.complex64)
    sigma = np.float32(1.0 / s.snr)
    noise = rng.standard_normal((2,) + img.shape, dtype=np.float32) * sigma
    magnitude = np.hypot(complex_img.real + noise[0], complex_img.imag + noise[1])
    return (magnitude * np.float32(s.gain)).astype(np.float32)


def _coil_bias(s: _Subject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sum-of-squares sensitivity of 2-4 surface coils, normalised to mean 1, ``(Z, Y, X)``."""
    f32 = np.float32
    hx, hy = s.heart_centre
    A, B = s.body_axes
    total = np.zeros((s.n_slices, len(y), len(x)), dtype=np.float32)
    for angle, out, z in s.coils:
        cs, ct = A * out * np.cos(angle), B * out * np.sin(angle)
        cx = hx + s.body_offset[0] + cs * np.cos(s.body_angle) - ct * np.sin(s.body_angle)
        cy = hy + s.body_offset[1] + cs * np.sin(s.body_angle) + ct * np.cos(s.body_angle)
        dist2 = (
            (x[None, None, :] - f32(cx)) ** 2 + (y[None, :, None] - f32(cy)) ** 2
            + (s.slice_depths[:, None, None] - f32(z)) ** 2
        )
        total += (1 / (1 + dist2 / f32(s.coil_reach**2))) ** 2
    sos = np.sqrt(total)
    sos /= np.float32(sos.mean())
    return sos ** np.float32(s.bias_exponent)


def cardiac_case(seed: int, size: int = 128) -> CardiacCase:
    """Generate one synthetic ACDC-like patient (ED and ES), deterministic in ``seed``.

    ``size`` is the in-plane matrix (128 -> 2.1-2.8 mm pixels; 256 -> ACDC-native pixels).
    Returns a :class:`CardiacCase` with ``(Z, Y, X)`` arrays, Z in 6..18.
    """
    if int(size) < 16 or int(size) % 2:
        raise ValueError(f"cardiac_case: size must be an even number >= 16, got {size!r}")
    rng = np.random.default_rng(seed)
    s = _Subject(rng, int(size))
    ss = _SUPERSAMPLE
    half = (s.size - 1) / 2
    x = ((np.arange(s.size) - half) * s.pixel).astype(np.float32)
    sub = ((np.arange(s.size * ss) - (s.size * ss - 1) / 2) * s.pixel / ss).astype(np.float32)
    thorax = _thorax(s, sub, sub, rng)
    texture = 1 + np.float32(0.06) * smooth_field(rng, (s.slice_depths, x, x), (s.spacing, 8.0, 8.0))
    bias = _coil_bias(s, x, x)
    volumes = {}
    for name in ("ED", "ES"):
        clean, label = _render_frame(s, name, thorax, sub, sub)
        volumes[name] = (_acquire(s, clean, texture, bias, rng), label)
    return CardiacCase(
        ed_image=volumes["ED"][0], ed_label=volumes["ED"][1],
        es_image=volumes["ES"][0], es_label=volumes["ES"][1],
        spacing=(float(s.spacing), float(s.pixel), float(s.pixel)),
        ed_frame=s.ed_frame, es_frame=s.es_frame, nb_frames=s.nb_frames,
        group=s.group, height_cm=s.height_cm, weight_kg=s.weight_kg,
    )
