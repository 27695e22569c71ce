"""Intensity normalisation: one vocabulary and one code path, from recipe to store to network input.

Why from stored statistics: the store computes ``stats`` (:func:`intensity_stats`: min, max,
mean, std, p0_5, p99_5) once when a case is written, so a read task can normalise any slab of a
case without first reading the whole volume. Every slice of a case therefore gets the *same*
affine map, exactly as if the volume had been normalised before slicing (which is what the
published ACDC data did offline). NIfTI files outside any store get the same statistics from
the same function, so predict normalises them exactly as training did.

Methods (``NormalisationSpec.method``), the names ``data.normalisation`` also uses:

* ``"percentile"`` (MR default): clip to ``[p0_5, p99_5]`` of the case, then min-max to [0, 1].
  Robust to the arbitrary gain and bright outliers of MR.
* ``"window"`` (CT default): clip to a fixed Hounsfield window (default ``[-125, 275]``, the
  abdominal window used by Synapse/TransUNet-style LiTS pipelines), then scale to [0, 1].
* ``"minmax"``: min-max of the whole case to [0, 1] (the SSL4MIS ACDC convention).
* ``"zscore"``: subtract the case mean, divide by its std (no clipping).
* ``"none"``: leave intensities as stored.

A normalisation block is written everywhere (recipes, store metadata, reports) as
``{method: ..., window: [low, high]}`` (the window only for ``method: window``). Where the spec
comes from, first match wins: an explicit spec, the store metadata's ``normalisation`` block
(which ingest copies from the recipe), then the modality default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from action_ray.errors import ConfigError
from action_ray.io.tail_percentiles import tail_percentiles

METHODS = ("percentile", "window", "minmax", "zscore", "none")
#: The key of the block in recipes and in the store metadata.
BLOCK_KEY = "normalisation"

#: Abdominal HU window used when a CT dataset names no window.
DEFAULT_CT_WINDOW = (-125.0, 275.0)
DEFAULT_EPSILON = 1e-6

#: The percentiles the store records per case, and the keys of the store's ``stats`` holding them.
STORED_PERCENTILES = (0.5, 99.5)
PERCENTILE_KEYS = ("p0_5", "p99_5")

# ------------------------------------------------------------------------- older spellings
# Before the vocabulary was unified, recipes named methods differently (``percentile_minmax``),
# gave windows as ``low``/``high`` and percentiles as ``lower: 0.5``/``upper: 99.5``, and ingest
# copied that block verbatim into every store's metadata; ``hu_window`` and ``z-score`` were
# accepted by name, and a block could sit under the American key. Stores written then and user
# recipes still say so, so these spellings are read, here and nowhere else, and never written.
_OLD_METHOD_NAMES = {"percentile_minmax": "percentile", "hu_window": "window", "z-score": "zscore"}
_OLD_BLOCK_KEY = "normalization"


def current_spelling(block: Mapping[str, Any] | str, where: str = BLOCK_KEY) -> dict[str, Any]:
    """A normalisation block (or a bare method name) in today's vocabulary.

    Maps every spelling action-ray ever accepted: old method names, ``low``/``high`` ->
    ``window``, and ``lower``/``upper``, which must be the stored 0.5/99.5 percentiles and are
    then implied by ``method: percentile``. Keys it does not know are passed on for the caller
    to reject by name. ``None`` values count as absent (YAML ``key:`` with nothing after it).
    """
    if isinstance(block, str):
        block = {"method": block}
    out = {k: v for k, v in block.items() if v is not None}
    if "method" in out:
        method = str(out["method"])
        out["method"] = _OLD_METHOD_NAMES.get(method, method)
    percentiles = (out.pop("lower", STORED_PERCENTILES[0]), out.pop("upper", STORED_PERCENTILES[1]))
    if percentiles != STORED_PERCENTILES:
        raise ConfigError(
            f"{where}: percentiles [{percentiles[0]}, {percentiles[1]}] are not stored per case; only "
            f"{list(STORED_PERCENTILES)} (the store's {'/'.join(PERCENTILE_KEYS)}) are supported"
        )
    if "low" in out or "high" in out:
        if "window" in out:
            raise ConfigError(f"{where}: give the window once, as window: [low, high]")
        out["window"] = [out.pop("low", None), out.pop("high", None)]
    return out


def stored_block(holder: Mapping[str, Any]) -> Any:
    """The normalisation block of a metadata or recipe mapping, under today's key or the old one."""
    return holder.get(BLOCK_KEY) or holder.get(_OLD_BLOCK_KEY)


# ------------------------------------------------------------------------------ the spec
@dataclass(frozen=True)
class NormalisationSpec:
    """How to map a case's stored intensities to network input.

    ``window`` is only used by ``method="window"``; ``epsilon`` guards constant cases (a volume
    whose clip range is empty maps to all zeros instead of dividing by zero).
    """

    method: str = "percentile"
    window: tuple[float, float] = DEFAULT_CT_WINDOW
    epsilon: float = DEFAULT_EPSILON

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"normalisation.method={self.method!r} is not one of {', '.join(METHODS)}")
        low, high = self.window
        if not low < high:
            raise ConfigError(f"normalisation.window={list(self.window)} must be [low, high] with low < high")

    def to_dict(self) -> dict[str, Any]:
        """The block as recipes, store metadata and reports write it: only what the method uses."""
        out: dict[str, Any] = {"method": self.method}
        if self.method == "window":
            out["window"] = [float(v) for v in self.window]
        if self.epsilon != DEFAULT_EPSILON:
            out["epsilon"] = float(self.epsilon)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str, where: str = BLOCK_KEY) -> "NormalisationSpec":
        """Build from a block (or a method name) in any spelling; unknown keys are an error naming them."""
        data = current_spelling(data, where)
        unknown = set(data) - {"method", "window", "epsilon"}
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: method, window, epsilon")
        kwargs: dict[str, Any] = {}
        if "method" in data:
            kwargs["method"] = data["method"]
        window = data.get("window")
        if window is not None:
            if not isinstance(window, (list, tuple)) or len(window) != 2 or None in window:
                raise ConfigError(f"{where}.window must be [low, high], got {window!r}")
            kwargs["window"] = (float(window[0]), float(window[1]))
        if "epsilon" in data:
            kwargs["epsilon"] = float(data["epsilon"])
        return cls(**kwargs)


def default_spec_for_modality(modality: str | None) -> NormalisationSpec:
    """MR (and anything unknown) -> percentile clip; CT -> HU window."""
    if modality and modality.upper() == "CT":
        return NormalisationSpec(method="window")
    return NormalisationSpec(method="percentile")


def resolve_spec(
    dataset_meta: Mapping[str, Any] | None,
    explicit: NormalisationSpec | Mapping[str, Any] | str | None = None,
) -> NormalisationSpec:
    """Pick the spec for a store: explicit > dataset metadata (or a recipe mapping in it) > modality default."""
    if isinstance(explicit, NormalisationSpec):
        return explicit
    if explicit is not None:
        return NormalisationSpec.from_dict(explicit)
    meta = dataset_meta or {}
    places = [("dataset metadata", meta)]
    if isinstance(meta.get("recipe"), Mapping):
        places.append(("dataset metadata recipe", meta["recipe"]))
    for where, holder in places:
        block = stored_block(holder)
        if block:
            return NormalisationSpec.from_dict(block, where=f"{where} '{BLOCK_KEY}'")
    return default_spec_for_modality(meta.get("modality"))


# ---------------------------------------------------------------- statistics and the map
def intensity_stats(image: np.ndarray) -> dict[str, float]:
    """min, max, mean, std and the 0.5 / 99.5 percentiles of a whole case: what every method reads.

    Computed in float64 so that large volumes do not lose precision in the sums.
    """
    p_lo, p_hi = tail_percentiles(image, STORED_PERCENTILES)  # np.percentile's floats, faster
    return {
        "min": float(image.min()),
        "max": float(image.max()),
        "mean": float(image.mean(dtype=np.float64)),
        "std": float(image.std(dtype=np.float64)),
        PERCENTILE_KEYS[0]: float(p_lo),
        PERCENTILE_KEYS[1]: float(p_hi),
    }


def affine_for_case(spec: NormalisationSpec, stats: Mapping[str, float],
                    case_id: str = "?") -> tuple[float, float, float, float]:
    """Return ``(clip_low, clip_high, shift, scale)`` so that ``out = (clip(x) - shift) * scale``.

    Clip bounds are ``±inf`` when the method does not clip. Raises :class:`ConfigError` naming
    the case and the missing statistic when the store lacks what the method needs.
    """

    def stat(name: str) -> float:
        if name not in stats or stats[name] is None:
            raise ConfigError(
                f"case {case_id!r} has no stored statistic {name!r} needed by normalisation "
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


def normalise_array(image: np.ndarray, spec: NormalisationSpec, stats: Mapping[str, float],
                    case_id: str = "?") -> np.ndarray:
    """Normalise any slab of one case; returns float32 of the same shape.

    image: (..., Y, X) raw stored intensities of case ``case_id``.
    """
    low, high, shift, scale = affine_for_case(spec, stats, case_id)
    out = np.asarray(image, dtype=np.float32)
    if np.isfinite(low) or np.isfinite(high):
        out = np.clip(out, low, high)
    out = (out - np.float32(shift)) * np.float32(scale)
    return out.astype(np.float32, copy=False)
