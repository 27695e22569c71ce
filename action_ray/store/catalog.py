"""Which cases are complete, and their metadata, in O(1) round trips on object stores.

The completion marker of case ``<id>`` is the object ``complete/<id>.json``: it holds the case's
full metadata plus a random ``write_id``, is written **last** (after every chunk and the case's
own ``zarr.json``), and is deleted **first** when a case is rewritten. Its existence is the
only thing that makes a case visible, so correctness never depends on anything else.

Listing is one LIST of ``complete/`` (one request per 1000 cases on S3), which also returns
each marker's ETag. ``index.json`` (written by :meth:`Catalog.finalize`, e.g. at the end of an
ingest) caches every marker's metadata together with the ETag it had; an entry is used only
if the ETag in the listing still matches, and every other marker is fetched concurrently. A
stale, missing or concurrently overwritten index therefore only costs extra GETs, never a wrong
answer, and writers of different cases never touch a shared object.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable

from action_ray.files import write_atomic
from action_ray.store.schema import CASES_GROUP, check_case_id

MARKERS_DIR = "complete"
INDEX_KEY = "index.json"


def marker_key(case_id: str) -> str:
    return f"{MARKERS_DIR}/{check_case_id(case_id)}.json"


def _etag(entry: dict) -> str | None:
    """The content tag a listing reports for an object (S3 'ETag'), or None (local disks)."""
    for key in ("ETag", "etag", "md5Hash"):
        if entry.get(key):
            return str(entry[key]).strip('"')
    return None


class Catalog:
    """Markers and the index of one store. ``fail(what, todo, exc)`` builds the StoreError."""

    def __init__(self, fs, root: str, local: bool, fail: Callable[..., Exception]):
        self._fs, self._root, self._local, self._fail = fs, root, local, fail

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"

    # ------------------------------------------------------------------------------ markers
    def put_marker(self, case_id: str, doc: dict[str, Any]) -> None:
        """Write the marker (all-or-nothing: PUT on S3, rename on local disks)."""
        payload = json.dumps({**doc, "write_id": uuid.uuid4().hex}).encode()
        path = self._path(marker_key(case_id))
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, payload)
        else:
            self._fs.pipe_file(path, payload)
        self._fs.invalidate_cache(self._path(MARKERS_DIR))

    def drop_marker(self, case_id: str) -> None:
        path = self._path(marker_key(case_id))
        try:
            self._fs.rm_file(path)
        except FileNotFoundError:
            pass
        self._fs.invalidate_cache(self._path(MARKERS_DIR))

    def read_marker(self, case_id: str) -> dict | None:
        """The marker document, or None if the case is not complete."""
        try:
            raw = self._fs.cat_file(self._path(marker_key(case_id)))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail(f"cannot read the marker of case {case_id!r}",
                             "check the endpoint/bucket is reachable", exc) from None
        return _parse(raw)

    # ------------------------------------------------------------------------------ listing
    def _ls(self, key: str, detail: bool):
        path = self._path(key)
        try:
            self._fs.invalidate_cache(path)
            return self._fs.ls(path, detail=detail)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._fail(f"cannot list {key}/", "check the endpoint/bucket is reachable", exc) from None

    def listed_markers(self) -> dict[str, str | None]:
        """case id -> ETag (or None) of every marker: one listing."""
        found = {}
        for entry in self._ls(MARKERS_DIR, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "file" and name.endswith(".json"):
                found[name[: -len(".json")]] = _etag(entry)
        return found

    def case_dirs(self) -> list[str]:
        """Ids with anything under ``cases/`` (complete, being written, or leftovers)."""
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in self._ls(CASES_GROUP, detail=False)}
        names.discard("zarr.json")
        return sorted(names)

    def complete_docs(self) -> dict[str, tuple[dict, str | None]]:
        """case id -> (marker document, ETag) for every complete case, sorted by id."""
        listed = self.listed_markers()
        index = self._read_index()
        docs: dict[str, tuple[dict, str | None]] = {}
        missing = []
        for case_id, etag in listed.items():
            cached = index.get(case_id)
            if etag is not None and cached is not None and cached.get("etag") == etag:
                docs[case_id] = (cached["doc"], etag)
            else:
                missing.append(case_id)
        for case_id, doc in self.read_markers(missing).items():
            docs[case_id] = (doc, listed[case_id])
        return dict(sorted(docs.items()))

    def read_markers(self, case_ids: list[str]) -> dict[str, dict]:
        """case id -> marker document of those ``case_ids`` that are complete, in one batch.

        One concurrent batch of reads (s3fs issues them in parallel), so the metadata of
        thousands of cases costs a few round-trip latencies, not one per case.
        """
        if not case_ids:
            return {}
        paths = {self._path(marker_key(i)): i for i in case_ids}
        try:
            raw = self._fs.cat(list(paths), on_error="return")
        except Exception as exc:
            raise self._fail("cannot read completion markers", "check the endpoint/bucket is reachable",
                             exc) from None
        docs: dict[str, dict] = {}
        for path, case_id in paths.items():
            value = raw.get(path, FileNotFoundError(path))
            if isinstance(value, FileNotFoundError):
                continue  # absent, or removed since the listing: not complete
            if isinstance(value, BaseException):
                raise self._fail(f"cannot read the marker of case {case_id!r}",
                                 "check the endpoint/bucket is reachable", value)
            doc = _parse(value)
            if doc is not None:
                docs[case_id] = doc
        return docs

    # -------------------------------------------------------------------------------- index
    def _read_index(self) -> dict[str, dict]:
        try:
            raw = self._fs.cat_file(self._path(INDEX_KEY))
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise self._fail("cannot read index.json", "check the endpoint/bucket is reachable", exc) from None
        doc = _parse(raw) or {}
        cases = doc.get("cases")
        return cases if isinstance(cases, dict) else {}

    def finalize(self) -> int:
        """Rewrite ``index.json`` from the current markers; returns the number of cases indexed."""
        docs = self.complete_docs()
        index = {"format_version": 1,
                 "cases": {i: {"etag": etag, "doc": doc} for i, (doc, etag) in docs.items() if etag}}
        self._fs.pipe_file(self._path(INDEX_KEY), json.dumps(index).encode())
        return len(index["cases"])


def _parse(raw: bytes) -> dict | None:
    """A JSON object, or None for a torn/empty object (treated as 'not complete')."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
