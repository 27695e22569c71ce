"""Dotted keys: the flat ``section.key`` view of a config tree, and the keys that are special.

Why a module of its own: the schema hashes a flattened config (:meth:`Config.hash`), the
loader applies ``a.b=value`` overrides and clears the partner of an exclusive pair, and tools
outside the package (benchmark variants) compare flattened configs. All of them must agree on
which mappings are one value rather than a section, so that knowledge lives here, below both
the schema and the loader.
"""

from __future__ import annotations

from typing import Any, Mapping

#: Keys left out of :meth:`Config.hash`: they name, place or pace a run but do not change what it
#: computes (storage options may also hold credentials).
HASH_EXCLUDED_KEYS = frozenset(
    {
        "data.storage_options",
        "data.verify_chunks",
        "train.run_name",
        "train.resume",
        "train.tracking",
        "train.tracking_uri",
        "train.tracking_experiment",
        "train.storage_path",
        "train.report_every",
        "train.checkpoint_every",
        "train.num_to_keep",
        "train.max_failures",
        "train.collective_timeout_s",
        "train.placement_strategy",
        "train.worker_resources",
        "eval.batch_size",
    }
)

#: Keys whose value is a free-form mapping (one value, not a section).
FREE_FORM_KEYS = frozenset({"data.storage_options", "train.worker_resources"})

#: Pairs of keys of which only one may be set; an override of one clears the other.
EXCLUSIVE_PAIRS: tuple[tuple[str, str], ...] = (
    ("data.label_ratio", "data.labelled_patients"),
    ("distill.bank_batches", "distill.bank_size"),
    ("model.preset", "model.widths"),
)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; free-form dicts (storage_options, worker_resources)
    stay one value.

    Why: one ``key: value`` per setting is what a hash, a listing or a comparison of two configs
    needs; a free-form mapping is one setting, so flattening it would invent keys the schema
    does not have.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in FREE_FORM_KEYS:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def is_hash_excluded(key: str) -> bool:
    """Whether dotted ``key`` (or the free-form mapping it lies in) is left out of the hash."""
    return any(key == k or key.startswith(k + ".") for k in HASH_EXCLUDED_KEYS)
