"""The Zarr v3 volume store: write a case atomically, list complete cases, read slices and patches.

One :class:`VolumeStore` works the same on a local directory and on ``s3://``: array I/O goes
through zarr (``LocalStore`` or ``FsspecStore``), and the few whole-object operations zarr has no
API for (listing case ids, reading many markers at once, deleting a leftover) go through the
fsspec filesystem from :func:`action_ray.urls.filesystem_for`.

Listing is one ``ls`` of ``cases/`` plus one *concurrent* batch read of every case's
``zarr.json`` (s3fs issues them in parallel), so a store with thousands of cases costs a handful
of round-trip latencies, not thousands, and no shared index can go stale when several
processes write different cases at once. See docs/store.md for the trade-off.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from action_ray import __version__
from action_ray.errors import CaseError, StoreError
from action_ray.io.normalise import intensity_stats
from action_ray.store import ome
from action_ray.store.bulk import cyclic_gc_paused
from action_ray.store.case_objects import (
    ROOT_DOCUMENT, ArrayPlan, CaseObjects, build_case_objects, group_document,
)
from action_ray.store.catalog import Catalog
from action_ray.store.codecs import (
    IMAGE_CODEC_NAME, LABEL_CODEC_NAME, chunk_shape, image_compressors, label_compressors, shard_shape,
)
from action_ray.store.schema import (
    ATTRS_KEY, AXES, CASES_GROUP, FORMAT_VERSION, IMAGE_ARRAY, LABEL_ARRAY, LABEL_IMAGE_NAME,
    LABELS_GROUP, MAX_CLASS_INDEX, CaseInfo, CaseMeta, case_attrs, case_key, check_case_id,
    classes_from_attrs, dataset_attrs, info_from_attrs, label_voxel_counts, validate_meta,
)
from action_ray.urls import (
    filesystem_for, is_remote, redact, secret_option_values, storage_advice, storage_options_from_env,
)

_ZARR_JSON = "zarr.json"


def _secret_values(options: Mapping[str, Any] | None) -> list[str]:
    """Every credential value inside (possibly nested) storage options (allow-list rule)."""
    return secret_option_values(options)


class VolumeStore:
    """An opened action-ray store. Use :func:`open_store` or :func:`create_store` to get one.

    Instances pickle (for Ray tasks) as their URL and storage options and reconnect lazily.
    Metadata of complete cases is cached per instance: a complete case only changes through
    ``write_case(..., overwrite=True)``, and a process that must see another process's overwrite
    opens the store again.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url).rstrip("/")
        self._storage_options = dict(storage_options or {})
        self._connect()
        self.dataset_meta: dict = self._read_dataset_meta()
        self.classes: dict[int, str] = classes_from_attrs(self.dataset_meta)

    # ----------------------------------------------------------------------------- plumbing
    def _connect(self) -> None:
        import zarr

        self._fs, self._root = filesystem_for(self.url, self._storage_options)
        if is_remote(self.url):
            options = storage_options_from_env(self.url, self._storage_options)
            self._zstore = zarr.storage.FsspecStore.from_url(self.url, storage_options=options)
        else:
            self._zstore = zarr.storage.LocalStore(self._root)
        self._catalog = Catalog(self._fs, self._root, not is_remote(self.url), self._error)
        self._infos: dict[str, CaseInfo] = {}
        self._arrays: dict[tuple[str, str], Any] = {}

    def __getstate__(self) -> dict:
        return {"url": self.url, "storage_options": self._storage_options,
                "dataset_meta": self.dataset_meta}

    def __setstate__(self, state: dict) -> None:
        self.url = state["url"]
        self._storage_options = state["storage_options"]
        self.dataset_meta = state["dataset_meta"]
        self.classes = classes_from_attrs(self.dataset_meta)
        self._connect()

    def __repr__(self) -> str:
        return f"VolumeStore({redact(self.url)!r})"

    def _scrub(self, text: str) -> str:
        """``text`` with every credential (env or storage option) masked."""
        text = redact(str(text))
        userinfo = re.match(r"[a-z0-9+.\-]+://([^/@\s]+)@", self.url)
        secrets = _secret_values(self._storage_options) + ([userinfo.group(1)] if userinfo else [])
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, what: str, todo: str, exc: BaseException | None = None) -> StoreError:
        detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        return StoreError(self._scrub(f"store {self.url}: {what}{detail}; {todo}"))

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"

    def _read_json(self, key: str) -> dict | None:
        """A JSON object from the store, or None if the key does not exist."""
        try:
            raw = self._fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            raise self._error(f"access denied reading {key}",
                              "check the credentials (AWS_* variables or --storage-option key=/secret=)", exc) from None
        except Exception as exc:  # connection refused, DNS, timeouts, botocore errors, bad options
            raise self._error(f"cannot read {key}", storage_advice(exc), exc) from None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise self._error(f"{key} is not valid JSON", "the store is damaged; re-ingest it", exc) from None

    def _bucket_exists(self) -> bool:
        try:
            return bool(self._fs.exists(self._root.split("/")[0]))
        except Exception:  # reachability problems were already reported by the read
            return True

    def _read_dataset_meta(self) -> dict:
        doc = self._read_json(_ZARR_JSON)
        if doc is None:
            if is_remote(self.url) and not self._bucket_exists():
                raise self._error(f"bucket {self._root.split('/')[0]!r} does not exist",
                                  "check the bucket name and endpoint (AWS_ENDPOINT_URL)")
            raise self._error("no store here (zarr.json missing)",
                              "check the URL, or create one with `action-ray ingest`")
        meta = (doc.get("attributes") or {}).get(ATTRS_KEY)
        if doc.get("zarr_format") != 3 or not isinstance(meta, dict) or "classes" not in meta:
            raise self._error("not an action-ray store (no Zarr v3 root with attrs['action_ray'])",
                              "point at a store written by `action-ray ingest`")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise self._error(f"format_version {meta['format_version']} is newer than this "
                              f"action-ray understands ({FORMAT_VERSION})", "upgrade action-ray")
        return meta

    # ------------------------------------------------------------------------------ writing
    def write_case(self, meta: CaseMeta, image: np.ndarray, label: np.ndarray | None,
                   *, chunking: str = "slice", overwrite: bool = False, sharded: bool = True) -> None:
        """Write one case so that readers see all of it or none of it.

        ``image`` is (Z, Y, X) float32 (other real dtypes are converted), ``label`` (Z, Y, X)
        with integer class ids from the store's classes, or None for an unlabelled case.
        Order: remove the marker and any leftover of this id; encode the whole case in memory;
        push its chunks and inner documents in one batch, then the case's ``zarr.json``
        (``complete: true``), then the completion marker. Until the marker lands the case is
        invisible, whatever was pushed.
        Raises :class:`StoreError` if the case is already complete and ``overwrite`` is False.
        ``sharded=False`` stores each slice chunk as its own object, the layout before sharding
        (``bench reads`` compares the two; readers handle both, from the array's metadata).
        """
        validate_meta(meta)
        image, label, counts = self._checked_arrays(meta, image, label)
        chunks = chunk_shape(image.shape, chunking)
        shards = shard_shape(image.shape, chunking) if sharded else None
        if not overwrite and self.is_complete(meta.case_id):
            raise self._error(f"case {meta.case_id!r} is already complete",
                              "pass overwrite=True (ingest --overwrite) to replace it")
        stats = intensity_stats(image)
        key = case_key(meta.case_id)
        self._forget(meta.case_id)
        try:
            self._catalog.drop_marker(meta.case_id)  # invisible from here on
            self._remove_key(key)
            case, done = self._case_objects(meta, case_attrs(meta, image.shape, stats, counts, complete=False),
                                            image, label, chunks, shards)
            self._put_objects(key, case.without_root_document())  # chunks and inner documents
            self._put_objects(key, {ROOT_DOCUMENT: case.root_document})  # says complete: true
            self._catalog.put_marker(meta.case_id, done)  # the completion marker, last
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(f"writing case {meta.case_id!r} failed",
                              "check the storage is writable and has space; the half-written case stays "
                              "invisible and is replaced by the next write", exc) from exc

    def _case_objects(self, meta: CaseMeta, pending: dict, image: np.ndarray, label: np.ndarray | None,
                      chunks: tuple[int, ...], shards: tuple[int, ...] | None) -> tuple[CaseObjects, dict]:
        """The case's documents and chunks, encoded in memory with zarr's codecs (case_objects.py says why).

        The case's own document already says ``complete: true`` and records the chunks
        stored; it is pushed after everything else, and the marker after it.
        """
        spacing = tuple(float(s) for s in meta.spacing)
        groups = {"": {ATTRS_KEY: pending, "ome": ome.image_attrs(meta.case_id, spacing)}}
        arrays = [ArrayPlan(IMAGE_ARRAY, image, image_compressors(), 0.0)]
        if label is not None:
            groups[LABELS_GROUP] = {"ome": ome.labels_group_attrs()}
            groups[f"{LABELS_GROUP}/{LABEL_IMAGE_NAME}"] = {
                "ome": ome.label_image_attrs(meta.case_id, spacing, self.classes)}
            arrays.append(ArrayPlan(LABEL_ARRAY, label, label_compressors(), 0))
        draft = build_case_objects(groups, arrays, chunks, AXES, shards)
        stored = {"image": draft.stored_chunks[IMAGE_ARRAY]}
        if label is not None:
            stored["label"] = draft.stored_chunks[LABEL_ARRAY]
        done = {**pending, "complete": True, "stored_chunks": stored}
        draft.objects[ROOT_DOCUMENT] = group_document({**groups[""], ATTRS_KEY: done})
        return draft, done

    def _put_objects(self, key: str, objects: Mapping[str, bytes]) -> None:
        """Write ``objects`` (keys relative to the store key ``key``) in one batch.

        On object stores fsspec sends the PUTs concurrently; on a local disk the folders are
        made once and each file written directly (the completion marker, not the files, makes
        a case visible, so a torn file is never read).
        """
        paths = {f"{self._path(key)}/{name}": value for name, value in objects.items()}
        if is_remote(self.url):
            self._fs.pipe(paths)
            return
        base = self._path(key)
        folders = {base}
        for path in paths:
            folder = os.path.dirname(path)
            while folder not in folders:  # every folder between the case and its files
                folders.add(folder)
                folder = os.path.dirname(folder)
        os.makedirs(base, exist_ok=True)
        for folder in sorted(folders - {base}):  # a parent sorts before its children
            with contextlib.suppress(FileExistsError):  # one mkdir each (makedirs stats first)
                os.mkdir(folder)
        for path, value in paths.items():
            with open(path, "wb") as handle:
                handle.write(value)

    def _checked_arrays(self, meta: CaseMeta, image: np.ndarray, label: np.ndarray | None
                        ) -> tuple[np.ndarray, np.ndarray | None, dict[str, int] | None]:
        """(float32 image, uint8 label or None, voxels per class or None), or a CaseError."""
        where = f"case {meta.case_id!r} (source {meta.source.get('image')})"
        image = np.asarray(image)
        if image.ndim != 3 or min(image.shape) < 1:
            raise CaseError(f"{where}: image must be a non-empty (Z, Y, X) array, got shape {image.shape}")
        if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
            raise CaseError(f"{where}: image dtype {image.dtype} is not numeric")
        image = np.ascontiguousarray(image, dtype=np.float32)
        if not np.all(np.isfinite(image)):
            raise CaseError(f"{where}: image contains NaN or infinite voxels; fix or mask the scan")
        if label is None:
            return image, None, None
        label = np.asarray(label)
        where = f"case {meta.case_id!r} (label {meta.source.get('label')})"
        if label.shape != image.shape:
            raise CaseError(f"{where}: label shape {label.shape} differs from image shape {image.shape}")
        if not (np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.floating)):
            raise CaseError(f"{where}: label dtype {label.dtype} is not numeric")
        if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
            raise CaseError(f"{where}: label has non-integer values; expected class ids")
        if label.dtype != np.uint8 and (label.min() < 0 or label.max() > MAX_CLASS_INDEX):
            raise CaseError(f"{where}: label values span [{label.min()}, {label.max()}], outside the store classes "
                            f"{sorted(self.classes)}; fix the label map or the dataset recipe")
        label = np.ascontiguousarray(label, dtype=np.uint8)
        # one counting pass finds unknown values (np.unique would sort every voxel) and gives
        # the per-class voxel counts the case's metadata records
        counts = np.bincount(label.ravel(), minlength=MAX_CLASS_INDEX + 1)
        unknown = [int(v) for v in np.flatnonzero(counts) if int(v) not in self.classes]
        if unknown:
            raise CaseError(f"{where}: label values {unknown} are not store classes "
                            f"{sorted(self.classes)}; fix the label map or the dataset recipe")
        return image, label, label_voxel_counts(counts, self.classes)

    def _remove_key(self, key: str) -> None:
        path = self._path(key)
        try:
            self._fs.invalidate_cache(path)
            if self._fs.exists(path):
                self._fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        self._fs.invalidate_cache(path)

    def _forget(self, case_id: str) -> None:
        self._infos.pop(case_id, None)
        for kind in (IMAGE_ARRAY, LABEL_ARRAY):
            self._arrays.pop((case_id, kind), None)

    # ------------------------------------------------------------------------------ listing
    def list_cases(self, split: str | None = None, has_label: bool | None = None) -> list[CaseInfo]:
        """Complete cases sorted by id, optionally only one split and/or only (un)labelled ones."""
        infos = []
        with cyclic_gc_paused():  # per-case cost flat in the store size (bulk.py)
            for case_id, (doc, _) in self._catalog.complete_docs().items():
                info = info_from_attrs({ATTRS_KEY: doc})
                self._infos.setdefault(case_id, info)
                if split is not None and info.split != split:
                    continue
                if has_label is not None and info.has_label != has_label:
                    continue
                infos.append(info)
        return infos

    def finalize(self) -> int:
        """Refresh ``index.json`` so the next ``list_cases`` on S3 costs two requests.

        Call it at the end of an ingest. Optional for correctness: without it (or with a stale
        one) listing just reads the markers it cannot validate. Returns the number indexed.
        """
        try:
            return self._catalog.finalize()
        except StoreError:
            raise
        except Exception as exc:
            raise self._error("cannot write index.json", "check the storage is writable", exc) from None

    def incomplete_cases(self) -> list[str]:
        """Ids with data under ``cases/`` but no completion marker (killed or running writers)."""
        complete = set(self._catalog.listed_markers())
        return [i for i in self._catalog.case_dirs() if i not in complete]

    def remove_incomplete(self) -> list[str]:
        """Delete leftovers of killed writes and return their ids.

        Do not run it while an ingest is writing into the same store: a case being written
        looks exactly like a leftover until its marker lands.
        """
        removed = self.incomplete_cases()
        for case_id in removed:
            self._forget(case_id)
            self._remove_key(case_key(case_id))
        return removed

    def is_complete(self, case_id: str) -> bool:
        return self._catalog.read_marker(case_id) is not None

    def case(self, case_id: str) -> CaseInfo:
        """Metadata of one complete case; :class:`StoreError` if it is absent or incomplete."""
        check_case_id(case_id)
        info = self._infos.get(case_id)
        if info is None:
            doc = self._catalog.read_marker(case_id)
            if doc is None:
                if self._read_json(f"{case_key(case_id)}/{_ZARR_JSON}") is not None:
                    raise self._error(f"case {case_id!r} is incomplete (its write was interrupted or is running)",
                                      "re-run ingest to rewrite it, or wait for the running ingest")
                raise self._error(f"no case {case_id!r}", "list the cases with `action-ray info STORE`")
            info = self._infos[case_id] = info_from_attrs({ATTRS_KEY: doc})
        return info

    def cases(self, case_ids: Sequence[str]) -> list[CaseInfo]:
        """Metadata of many complete cases, in the order given (a repeated id repeats its info).

        The markers not cached yet are read in one concurrent batch, where calling :meth:`case`
        for each id costs one round trip per case: planning the read of 10,000 cases on S3 then
        takes seconds, not minutes. Raises like :meth:`case` for an absent or incomplete id.
        """
        missing = [i for i in dict.fromkeys(case_ids) if i not in self._infos]
        with cyclic_gc_paused():  # per-case cost flat in the number of cases (bulk.py)
            for case_id, doc in self._catalog.read_markers(missing).items():
                self._infos[case_id] = info_from_attrs({ATTRS_KEY: doc})
        return [self.case(i) for i in case_ids]

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        """(sz, sy, sx) in mm, in array axis order."""
        return self.case(case_id).spacing

    # ------------------------------------------------------------------------------ reading
    def _array(self, case_id: str, kind: str):
        handle = self._arrays.get((case_id, kind))
        if handle is None:
            import zarr

            try:
                handle = zarr.open_array(self._zstore, path=case_key(case_id, kind), mode="r")
            except Exception as exc:
                raise self._error(f"case {case_id!r}: cannot open array {kind}",
                                  "the case is damaged; re-ingest it with overwrite", exc) from None
            self._arrays[(case_id, kind)] = handle
        return handle

    def _read(self, info: CaseInfo, selection: tuple) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            image = np.asarray(self._array(info.case_id, IMAGE_ARRAY)[selection])
            label = np.asarray(self._array(info.case_id, LABEL_ARRAY)[selection]) if info.has_label else None
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(f"case {info.case_id!r}: reading {selection} failed",
                              "a chunk may be missing or corrupt; re-ingest the case", exc) from None
        return image, label

    def verify_case(self, case_id: str) -> None:
        """Check that every chunk written at ingest is still there (one listing per array).

        A deleted chunk reads back as the fill value without any error, so readers that must
        not score zeros (evaluation) call this first. Raises :class:`StoreError` naming the case
        and array; does nothing for cases written before chunk counts were recorded.
        """
        info = self.case(case_id)
        for kind, expected in (info.stored_chunks or {}).items():
            array = self._array(case_id, IMAGE_ARRAY if kind == "image" else LABEL_ARRAY)
            try:
                found = int(array.nchunks_initialized)
            except Exception as exc:
                raise self._error(f"case {case_id!r}: cannot list the chunks of its {kind}",
                                  "check the store is reachable", exc) from None
            if found != expected:
                raise self._error(f"case {case_id!r}: its {kind} has {found} stored chunks where ingest wrote "
                                  f"{expected} (a chunk was deleted or added since)",
                                  "re-ingest the case with --overwrite")

    def read_volume(self, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(image float32 (Z, Y, X), label uint8 (Z, Y, X) or None)."""
        return self._read(self.case(case_id), (slice(None),) * 3)

    def read_slice(self, case_id: str, z: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Axial slice ``z``: (image (Y, X), label (Y, X) or None). One chunk with slice chunking."""
        info = self.case(case_id)
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= int(z) < info.shape[0]:
            raise self._error(f"case {case_id!r}: slice z={z!r} is out of range",
                              f"use 0 <= z < {info.shape[0]}")
        return self._read(info, (int(z), slice(None), slice(None)))

    def read_patch(self, case_id: str, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray | None]:
        """The (z, y, x) box as (image, label or None), each shaped like the box.

        Every slice must have step 1 and lie inside the volume (None means the whole axis);
        boxes are never clipped silently.
        """
        info = self.case(case_id)
        if not isinstance(box, tuple) or len(box) != 3 or not all(isinstance(s, slice) for s in box):
            raise self._error(f"case {case_id!r}: box {box!r} is not three slices", "pass (slice, slice, slice)")
        selection = []
        for axis, (s, size) in enumerate(zip(box, info.shape)):
            start = 0 if s.start is None else s.start
            stop = size if s.stop is None else s.stop
            if s.step not in (None, 1) or not 0 <= start < stop <= size:
                raise self._error(f"case {case_id!r}: box {box!r} is out of range on axis {AXES[axis]}",
                                  f"use step 1 and 0 <= start < stop <= {size} (shape {info.shape})")
            selection.append(slice(int(start), int(stop)))
        return self._read(info, tuple(selection))

    def array_key(self, case_id: str, kind: str = IMAGE_ARRAY) -> str:
        """Store-relative key of a case's ``image`` or ``label`` array (for direct zarr readers).

        The label lives at ``labels/label/0`` because it *is* the OME-NGFF label image.
        """
        member = {IMAGE_ARRAY: IMAGE_ARRAY, "label": LABEL_ARRAY}.get(kind)
        if member is None:
            raise StoreError(f"unknown array kind {kind!r}: use 'image' or 'label'")
        return case_key(case_id, member)


def _zarr_root_exists(url: str, storage_options: dict | None) -> bool:
    fs, root = filesystem_for(url, storage_options)
    fs.invalidate_cache(root)
    return fs.exists(f"{root}/{_ZARR_JSON}")


def open_store(url: str, storage_options: dict | None = None) -> VolumeStore:
    """Open an existing store; :class:`StoreError` if it is missing, unreachable or not ours."""
    return VolumeStore(url, storage_options)


def create_store(url: str, *, name: str, modality: str, layout: str, classes: dict[int, str],
                 storage_options: dict | None = None, exist_ok: bool = True,
                 extra: dict | None = None) -> VolumeStore:
    """Create a store (root + ``cases`` group), or open an existing compatible one.

    ``extra`` adds JSON-able dataset metadata, e.g. the recipe name and the intensity
    ``normalisation`` the data layer must apply (it is only written when the store is created).

    An existing store must have the same ``classes`` and ``layout``; otherwise a
    :class:`StoreError` names the key that differs. Safe to call from several processes.
    """
    import zarr

    if not classes or 0 not in classes:
        raise StoreError(f"classes for store {redact(url)} must include 0 (background), got {classes!r}")
    wanted = dataset_attrs(name=name, modality=modality, layout=layout, classes=classes,
                           created_by=f"action-ray {__version__}", codec=IMAGE_CODEC_NAME)
    wanted["label_codec"] = LABEL_CODEC_NAME
    for key, value in (extra or {}).items():
        wanted.setdefault(key, value)
    probe = VolumeStore.__new__(VolumeStore)
    probe.url, probe._storage_options = str(url).rstrip("/"), dict(storage_options or {})
    try:
        exists = _zarr_root_exists(url, storage_options)
    except Exception as exc:
        raise probe._error("cannot check whether a store exists", storage_advice(exc), exc) from None
    if exists:
        store = VolumeStore(url, storage_options)
        if not exist_ok:
            raise store._error("a store already exists here", "choose another URL or allow reuse")
        for key in ("classes", "layout"):
            if store.dataset_meta.get(key) != wanted[key]:
                raise store._error(f"existing store has {key}={store.dataset_meta.get(key)!r}, "
                                   f"not {wanted[key]!r}", "write to a new store URL")
        return store
    probe._connect()
    try:
        fs, root = probe._fs, probe._root
        if not is_remote(url) and fs.isfile(root):
            raise probe._error("this is a file, not a folder", "give a new path (e.g. ending in .zarr) for the store")
        if not is_remote(url) and fs.exists(root) and fs.ls(root):
            raise probe._error("the directory exists, is not empty and is not a store",
                               "choose an empty or new directory")
        zarr.create_group(probe._zstore, attributes={ATTRS_KEY: wanted}, zarr_format=3)
        zarr.create_group(probe._zstore, path=CASES_GROUP, zarr_format=3)
    except StoreError:
        raise
    except Exception as exc:
        raise probe._error("cannot create the store", "check the bucket exists and is writable", exc) from None
    return VolumeStore(url, storage_options)
