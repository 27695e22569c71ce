"""Per-case intensity normalisation from the statistics the store already holds.

Why from stored statistics: the store computes ``stats`` (min, max, mean, std, p0_5, p99_5) once
when a case is written, so a read task can normalise any slab of a case without first reading
the whole volume. Every slice of a case therefore gets the *same* affine map, exactly as if the
volume had been normalised before slicing (which is what the published ACDC data did offline).

Methods (``NormalizationSpec.method``):

* ``"percentile"`` (MR default): clip to ``[p0_5, p99_5]`` of the case, then min-max to [0, 1].
  Robust to the arbitrary gain and bright outliers of MR.
* ``"window"`` (CT default): clip to a fixed Hounsfield window (default ``[-125, 275]``, the
  abdominal window used by Synapse/TransUNet-style LiTS pipelines), then scale to [0, 1].
* ``"minmax"``: min-max of the whole case to [0, 1] (the SSL4MIS ACDC convention).
* ``"zscore"``: subtract the case mean, divide by its std (no clipping).
* ``"none"``: leave intensities as stored.

Where the spec comes from, first match wins: an explicit spec, ``dataset_meta["normalization"]``
(or a recipe's ``normalization`` block with the same keys), then the modality default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from action_ray.errors import ConfigError

METHODS = ("percentile", "window", "minmax", "zscore", "none")
#: Names used by dataset recipes (:mod:`action_ray.recipes`) for the same methods.
METHOD_ALIASES = {"percentile_minmax": "percentile", "hu_window": "window", "z-score": "zscore"}

#: Abdominal HU window used when a CT dataset names no window.
DEFAULT_CT_WINDOW = (-125.0, 275.0)

#: Keys of the store's per-case ``stats`` that bound the percentile clip.
PERCENTILE_KEYS = ("p0_5", "p99_5")


@dataclass(frozen=True)
class NormalizationSpec:
    """How to map a case's stored intensities to network input.

    ``window`` is only used by ``method="window"``; ``epsilon`` guards constant cases (a volume
    whose clip range is empty maps to all zeros instead of dividing by zero).
    """

    method: str = "percentile"
    window: tuple[float, float] = DEFAULT_CT_WINDOW
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"normalization.method={self.method!r} is not one of {', '.join(METHODS)}"
            )
        low, high = self.window
        if not low < high:
            raise ConfigError(f"normalization.window={list(self.window)} must be [low, high] with low < high")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["window"] = list(self.window)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str, where: str = "normalization") -> "NormalizationSpec":
        """Build from a dataset-metadata or recipe block; unknown keys are an error naming them.

        Accepts both this module's keys (``method``, ``window: [low, high]``) and the recipe
        vocabulary of :mod:`action_ray.recipes` (``method: percentile_minmax``, ``low``/``high``
        for windows, ``lower: 0.5``/``upper: 99.5`` for the stored percentiles).
        """
        if isinstance(data, str):
            return cls(method=METHOD_ALIASES.get(data, data))
        data = {k: v for k, v in data.items() if v is not None}
        unknown = set(data) - {"method", "window", "epsilon", "low", "high", "lower", "upper"}
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {sorted(unknown)}; allowed: method, window "
                "(or low/high), lower/upper, epsilon"
            )
        if (data.get("lower", 0.5), data.get("upper", 99.5)) != (0.5, 99.5):
            raise ConfigError(
                f"{where}: percentiles [{data.get('lower')}, {data.get('upper')}] are not stored per "
                "case; only lower: 0.5, upper: 99.5 (the store's p0_5/p99_5) are supported"
            )
        kwargs: dict[str, Any] = {}
        if "method" in data:
            kwargs["method"] = METHOD_ALIASES.get(str(data["method"]), str(data["method"]))
        window = data.get("window")
        if window is None and ("low" in data or "high" in data):
            window = (data.get("low"), data.get("high"))
        if window is not None:
            if not isinstance(window, (list, tuple)) or len(window) != 2 or None in window:
                raise ConfigError(f"{where}.window must be [low, high] (or keys low and high), got {window!r}")
            kwargs["window"] = (float(window[0]), float(window[1]))
        if "epsilon" in data:
            kwargs["epsilon"] = float(data["epsilon"])
        return cls(**kwargs)


def default_spec_for_modality(modality: str | None) -> NormalizationSpec:
    """MR (and anything unknown) -> percentile clip; CT -> HU window."""
    if modality and modality.upper() == "CT":
        return NormalizationSpec(method="window")
    return NormalizationSpec(method="percentile")


def resolve_spec(
    dataset_meta: Mapping[str, Any] | None,
    explicit: NormalizationSpec | Mapping[str, Any] | str | Any | None = None,
) -> NormalizationSpec:
    """Pick the spec for a store: explicit > dataset metadata / its recipe > modality default.

    ``explicit`` may also be a recipe's normalisation model (anything with ``model_dump()``).
    In ``dataset_meta`` the block may be under ``normalization`` / ``normalisation`` or inside a
    ``recipe`` mapping under the same names.
    """
    if isinstance(explicit, NormalizationSpec):
        return explicit
    if explicit is not None:
        if hasattr(explicit, "model_dump"):
            explicit = explicit.model_dump()
        return NormalizationSpec.from_dict(explicit)
    meta = dataset_meta or {}
    places = [("dataset metadata", meta)]
    if isinstance(meta.get("recipe"), Mapping):
        places.append(("dataset metadata recipe", meta["recipe"]))
    for where, block in places:
        for key in ("normalization", "normalisation"):
            if block.get(key):
                return NormalizationSpec.from_dict(block[key], where=f"{where} '{key}'")
    return default_spec_for_modality(meta.get("modality"))


def affine_for_case(spec: NormalizationSpec, stats: Mapping[str, float], case_id: str = "?") -> tuple[float, float, float, float]:
    """Return ``(clip_low, clip_high, shift, scale)`` so that ``out = (clip(x) - shift) * scale``.

    Clip bounds are ``±inf`` when the method does not clip. Raises :class:`ConfigError` naming
    the case and the missing statistic when the store lacks what the method needs.
    """

    def stat(name: str) -> float:
        if name not in stats or stats[name] is None:
            raise ConfigError(
                f"case {case_id!r} has no stored statistic {name!r} needed by normalization "
                f"method {spec.method!r}; re-ingest the case or choose another method"
            )
        return float(stats[name])

    inf = float("inf")
    if spec.method == "none":
        return -inf, inf, 0.0, 1.0
    if spec.method == "zscore":
        std = stat("std")
        return -inf, inf, stat("mean"), 1.0 / max(std, spec.epsilon)
    if spec.method == "window":
        low, high = spec.window
    elif spec.method == "minmax":
        low, high = stat("min"), stat("max")
    else:  # percentile
        low, high = stat(PERCENTILE_KEYS[0]), stat(PERCENTILE_KEYS[1])
    span = high - low
    scale = 1.0 / span if span > spec.epsilon else 0.0
    return low, high, low, scale


def normalize_array(image: np.ndarray, spec: NormalizationSpec, stats: Mapping[str, float], case_id: str = "?") -> np.ndarray:
    """Normalise any slab of one case; returns float32 of the same shape.

    image: (..., Y, X) raw stored intensities of case ``case_id``.
    """
    low, high, shift, scale = affine_for_case(spec, stats, case_id)
    out = np.asarray(image, dtype=np.float32)
    if np.isfinite(low) or np.isfinite(high):
        out = np.clip(out, low, high)
    out = (out - np.float32(shift)) * np.float32(scale)
    return out.astype(np.float32, copy=False)
