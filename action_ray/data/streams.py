"""Build the labelled, unlabelled and validation Ray Datasets of a training run.

Design (why, in short):

* **Two train streams** (the FT stage's two loaders; P1/P2 draw half of each batch from each).
  The small labelled stream is oversampled *in the read plan*: its case list is repeated
  ``ceil(unlabelled_rows / labelled_rows)`` times, so one epoch of it is at least as long as
  one epoch of the unlabelled stream and both run out together. Repeating inside the
  datasource streams: copies are separate read tasks, read lazily, never held all at once
  (``Dataset.union`` of copies would build N operators instead).
* **Per-epoch shuffle** ``"blocks"`` (default): ``randomize_block_order()`` reorders the read
  tasks' blocks on every execution and the consumer adds a local shuffle buffer
  (``meta.iter_kwargs()`` for ``iter_torch_batches``): bounded memory, order differs per epoch.
  ``"full"``: ``random_shuffle()``, an all-to-all exchange that materialises the epoch in the
  object store; only for stores that fit. ``"none"``: store order (validation).
* **Sharding**: Ray Train's default ``DataConfig`` splits every dataset given to
  ``TorchTrainer(datasets=...)`` with ``streaming_split(world_size, equal=True)``, so each
  worker gets a disjoint, equal-size shard per epoch (``train_data_config()`` returns that config
  explicitly).
* **Blocks**: Ray is asked for exactly as many blocks as the datasource plans read tasks, so it
  never splits the byte-sized blocks into ~1 MB pieces (docs/ray-notes.md §3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, NamedTuple, Sequence

from action_ray.data.source import VolumeSliceDatasource
from action_ray.data.splits import LabelSplit
from action_ray.errors import ConfigError
from action_ray.io.normalise import NormalisationSpec

SHUFFLE_MODES = ("blocks", "full", "none")


@dataclass(frozen=True)
class StreamSettings:
    """Data-path options of a run (the ``data:`` part of a training config).

    ``seed=None`` (default) draws a new block order every epoch. A fixed ``seed`` makes the
    block order reproducible but *the same every epoch* (Ray applies the seed at each
    execution); pair it with a per-epoch ``local_shuffle_seed`` in ``iter_torch_batches`` to
    still vary the order within the shuffle buffer. With several workers, which rows reach
    which worker under ``streaming_split`` also depends on timing, so bit-exact data order
    across runs needs one worker.
    """

    mode: str = "slice"
    output_size: tuple[int, int] | None = (256, 256)
    patch_size: tuple[int, int, int] | None = None
    patch_stride: tuple[int, int, int] | None = None
    image_interpolation: str = "bicubic"
    normalisation: NormalisationSpec | Mapping[str, Any] | str | None = None
    target_task_bytes: int = 16 * 2**20
    rows_per_task: int | None = None
    oversample_labelled: bool = True
    shuffle: str = "blocks"
    local_shuffle_buffer_size: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.shuffle not in SHUFFLE_MODES:
            raise ConfigError(f"data.shuffle={self.shuffle!r} must be one of {', '.join(SHUFFLE_MODES)}")
        if self.local_shuffle_buffer_size < 0:
            raise ConfigError("data.local_shuffle_buffer_size must be >= 0")

    @classmethod
    def from_config(cls, data_config: Any, **overrides: Any) -> "StreamSettings":
        """Settings from the run config's ``data`` section (:class:`action_ray.config.DataConfig`).

        ``dims=2`` -> slice rows resized to ``slice_size``²; ``dims=3`` -> patch rows of
        ``patch_size``. ``normalisation="store"`` defers to the store's recipe / modality;
        ``intensity_window`` means "clip to this window and scale to [0, 1]".
        """
        method = getattr(data_config, "normalisation", "store")
        window = getattr(data_config, "intensity_window", None)
        normalisation: NormalisationSpec | None = None
        if window is not None:
            if method not in ("store", "minmax", "percentile"):
                raise ConfigError(
                    f"data.intensity_window is set but data.normalisation={method!r}; a window "
                    "already scales to [0, 1]: use normalisation 'store' or 'minmax' with it"
                )
            normalisation = NormalisationSpec("window", window=(float(window[0]), float(window[1])))
        elif method != "store":
            normalisation = NormalisationSpec(method)
        if getattr(data_config, "dims", 2) == 3:
            base = cls(mode="patch", output_size=None, patch_size=tuple(data_config.patch_size),
                       normalisation=normalisation)
        else:
            size = int(getattr(data_config, "slice_size", 256))
            base = cls(mode="slice", output_size=(size, size), normalisation=normalisation)
        base = replace(base, local_shuffle_buffer_size=int(getattr(data_config, "shuffle_buffer_rows", 256)))
        return replace(base, **overrides)


@dataclass
class StreamMeta:
    """What the training loop needs to know about the streams it was given."""

    labelled_case_table: tuple[str, ...]
    unlabelled_case_table: tuple[str, ...]
    labelled_rows_per_epoch: int
    unlabelled_rows_per_epoch: int
    labelled_repeat: int
    labelled_read_tasks: int
    unlabelled_read_tasks: int
    normalisation: dict
    settings: StreamSettings
    columns: tuple[str, ...] = field(default=())

    def iter_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``iter_torch_batches`` that complete the chosen shuffle."""
        if self.settings.shuffle == "blocks" and self.settings.local_shuffle_buffer_size > 0:
            return {"local_shuffle_buffer_size": self.settings.local_shuffle_buffer_size}
        return {}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = {k: (v.to_dict() if isinstance(v, NormalisationSpec) else v)
                            for k, v in asdict(self.settings).items()}
        return data


class Streams(NamedTuple):
    labelled: Any  # ray.data.Dataset
    unlabelled: Any  # ray.data.Dataset | None when every train patient is labelled
    meta: StreamMeta


def _settings(settings: StreamSettings | None, overrides: Mapping[str, Any]) -> StreamSettings:
    base = settings or StreamSettings()
    unknown = set(overrides) - set(StreamSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown data option(s) {sorted(unknown)}")
    return replace(base, **overrides) if overrides else base


def make_datasource(
    store_url: str,
    storage_options: Mapping[str, Any] | None,
    case_ids: Sequence[str],
    settings: StreamSettings,
    *,
    with_label: bool,
):
    """A :class:`VolumeSliceDatasource` configured from ``settings``."""

    return VolumeSliceDatasource(
        store_url,
        storage_options,
        list(case_ids),
        mode=settings.mode,
        patch_size=settings.patch_size,
        patch_stride=settings.patch_stride,
        with_label=with_label,
        rows_per_task=settings.rows_per_task,
        target_task_bytes=settings.target_task_bytes,
        output_size=settings.output_size,
        image_interpolation=settings.image_interpolation,
        normalisation=settings.normalisation,
    )


def dataset_from_source(source, shuffle: str = "none", seed: int | None = None):
    """Read ``source`` into a Dataset with one block per planned read task, then shuffle."""
    import ray.data

    num_tasks = len(source.plan_tasks())
    dataset = ray.data.read_datasource(source, override_num_blocks=num_tasks)
    if shuffle == "blocks":
        dataset = dataset.randomize_block_order(seed=seed)
    elif shuffle == "full":
        dataset = dataset.random_shuffle(seed=seed)
    return dataset


def build_streams(
    store_url: str,
    storage_options: Mapping[str, Any] | None,
    split: LabelSplit,
    settings: StreamSettings | None = None,
    **overrides: Any,
) -> Streams:
    """The labelled (oversampled) and unlabelled train Datasets for ``split``, plus metadata.

    Pass both datasets to ``TorchTrainer(datasets={"labelled": ..., "unlabelled": ...})`` and
    iterate them in the worker with ``get_dataset_shard(name).iter_torch_batches(
    batch_size=B, drop_last=True, **meta.iter_kwargs())``. ``overrides`` are
    :class:`StreamSettings` fields.
    """
    settings = _settings(settings, overrides)
    if not split.labelled_cases:
        raise ConfigError("the label split has no labelled cases")
    labelled_source = make_datasource(store_url, storage_options, split.labelled_cases, settings, with_label=True)
    unlabelled_source = None
    if split.unlabelled_cases:
        unlabelled_source = make_datasource(
            store_url, storage_options, split.unlabelled_cases, settings, with_label=False
        )
    labelled_rows = labelled_source.num_rows()
    unlabelled_rows = unlabelled_source.num_rows() if unlabelled_source else 0
    repeat = 1
    if settings.oversample_labelled and unlabelled_rows > labelled_rows:
        repeat = math.ceil(unlabelled_rows / labelled_rows)
        labelled_source = make_datasource(
            store_url, storage_options, list(split.labelled_cases) * repeat, settings, with_label=True
        )
    labelled = dataset_from_source(labelled_source, settings.shuffle, settings.seed)
    unlabelled = (dataset_from_source(unlabelled_source, settings.shuffle, settings.seed)
                  if unlabelled_source else None)
    columns = ("image", "label", "case", "z") if settings.mode == "slice" else ("image", "label", "case", "z", "y", "x")
    meta = StreamMeta(
        labelled_case_table=labelled_source.case_table,
        unlabelled_case_table=unlabelled_source.case_table if unlabelled_source else (),
        labelled_rows_per_epoch=labelled_source.num_rows(),
        unlabelled_rows_per_epoch=unlabelled_rows,
        labelled_repeat=repeat,
        labelled_read_tasks=len(labelled_source.plan_tasks()),
        unlabelled_read_tasks=len(unlabelled_source.plan_tasks()) if unlabelled_source else 0,
        normalisation=labelled_source.normalisation.to_dict(),
        settings=settings,
        columns=columns,
    )
    return Streams(labelled, unlabelled, meta)


def train_data_config():
    """Ray Train ``DataConfig`` that splits every dataset into equal, disjoint worker shards."""
    from ray.train import DataConfig

    return DataConfig(datasets_to_split="all")
