"""Writing a whole phantom collection to a folder: cardiac (ACDC layout) or liver (LiTS layout).

Case ``i`` uses a seed derived from ``(seed, i)`` alone, so the files are byte-identical for
any number of workers; cases whose files already exist are skipped, so an interrupted run is
resumed by the same call. ``action-ray synth`` (:mod:`action_ray.commands.synth`) is the
command-line face of :func:`write_collection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from action_ray.errors import ActionRayError
from action_ray.files import write_atomic
from action_ray.io.recipe_hint import RECIPE_HINT_FILE, recipe_hint_bytes

KINDS = ("cardiac", "liver")

#: The recipe each kind is ingested with, named in the collection's recipe hint
#: (:mod:`action_ray.io.recipe_hint`), so phantoms get their own classes, normalisation and
#: 70/10/20 split rather than real ACDC's.
RECIPE_FOR_KIND = {"cardiac": "phantom-cardiac", "liver": "phantom-liver"}

#: A file at the collection root recording what generated it (kind, seed, size). Resuming skips
#: cases whose files exist, so without it a rerun with another seed or size would silently
#: mix two collections in one folder (and another kind would change the recipe hint).
MANIFEST_FILE = "action-ray-synth.json"


@dataclass(frozen=True)
class CollectionRequest:
    """What to synthesise: ``cases`` patients (cardiac) or volumes (liver) into ``out``."""

    kind: str
    out: Path
    cases: int
    size: int = 128
    seed: int = 0
    workers: int = 1

    @property
    def unit(self) -> str:
        return "patient" if self.kind == "cardiac" else "volume"

    @property
    def layout(self) -> str:
        return "ACDC" if self.kind == "cardiac" else "LiTS"


@dataclass(frozen=True)
class CollectionResult:
    written: int
    skipped: int


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` in a collection with seed ``seed``: independent of scheduling."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0])


def _is_complete(kind: str, out: Path, index: int) -> bool:
    from action_ray.synth import layouts  # lazy: numpy/nibabel stay out of `action-ray --help` (the CLI imports KINDS)

    if kind == "cardiac":
        return layouts.acdc_patient_complete(out, index)
    return layouts.lits_case_complete(out, index)


def make_case(kind: str, out: str, index: int, seed: int, size: int) -> int:
    """Generate and write case ``index`` (a top-level function so process pools can pickle it)."""
    from action_ray.synth import layouts  # lazy, as in _is_complete

    if kind == "cardiac":
        from action_ray.synth.cardiac import cardiac_case  # lazy: scipy only where a case is made

        layouts.write_acdc_patient(Path(out), index, cardiac_case(case_seed(seed, index), size))
    else:
        from action_ray.synth.liver import liver_case  # lazy: scipy only where a case is made

        layouts.write_lits_case(Path(out), index, liver_case(case_seed(seed, index), size))
    return index


def check_request(request: CollectionRequest) -> None:
    """Refuse impossible requests before anything is written, naming the option to fix."""
    if request.kind not in KINDS:
        raise ActionRayError(f"unknown phantom kind {request.kind!r}; choose one of {', '.join(KINDS)}")
    out = request.out
    if out.exists() and not out.is_dir():
        raise ActionRayError(f"--out {out} exists and is not a folder; pass a folder path")
    if request.cases < 1:
        raise ActionRayError(f"--cases must be >= 1, got {request.cases}")
    if request.workers < 1:
        raise ActionRayError(f"--workers must be >= 1, got {request.workers}")
    if request.seed < 0:
        raise ActionRayError(f"--seed must be >= 0, got {request.seed}")


def check_manifest(out: Path, kind: str, seed: int, size: int) -> bytes:
    """The manifest for these options; refuse a folder that was generated with other ones."""
    import json

    wanted = {"kind": kind, "seed": int(seed), "size": int(size)}
    path = out / MANIFEST_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError:
            found = None
        if not isinstance(found, dict) or any(found.get(k) != v for k, v in wanted.items()):
            before = (" ".join(f"--{k} {found.get(k)}" if k != "kind" else str(found.get(k)) for k in wanted)
                      if isinstance(found, dict) else "unreadable options")
            raise ActionRayError(
                f"--out {out} already holds phantoms made as `synth {before}` ({path}); resuming with "
                f"`synth {kind} --seed {seed} --size {size}` would mix two collections: pass the same "
                "kind/--seed/--size to add or finish cases, or choose another --out")
    return (json.dumps(wanted, sort_keys=True) + "\n").encode()


def _make_case_star(job: tuple) -> int:
    return make_case(*job)


def _generate(request: CollectionRequest, pending: list[int], bar) -> None:
    """Generate ``pending`` cases, in-process for one worker, else in a process pool.

    A multiprocessing pool (not concurrent.futures) because ``terminate()`` stops running
    workers at once on Ctrl-C; the atomic writes guarantee no half-written case survives.
    """
    import multiprocessing

    jobs = [(request.kind, str(request.out), i, request.seed, request.size) for i in pending]
    if request.workers == 1 or len(jobs) <= 1:
        for job in jobs:
            make_case(*job)
            bar.update(1)
        return
    pool = multiprocessing.get_context("spawn").Pool(min(request.workers, len(jobs)))
    try:
        for _ in pool.imap_unordered(_make_case_star, jobs, chunksize=1):
            bar.update(1)
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


def _remove_stale_parts(out: Path) -> None:
    """Delete temporary files left by a killed run (``.NAME.PID.part``, see action_ray.files.write_atomic)."""
    for part in out.rglob(".*.part"):
        part.unlink(missing_ok=True)


def write_collection(request: CollectionRequest, progress: bool = True) -> CollectionResult:
    """Write the missing cases of ``request`` (with its manifest and recipe hint) and say how many.

    Stale temporaries of a killed run are removed first; a folder made with another kind, seed
    or size is refused, so two collections never mix.
    """
    from tqdm import tqdm

    check_request(request)
    out = request.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ActionRayError(f"cannot create --out {out}: {exc.strerror}") from exc
    _remove_stale_parts(out)
    manifest = check_manifest(out, request.kind, request.seed, request.size)
    for path, content in ((out / MANIFEST_FILE, manifest),
                          (out / RECIPE_HINT_FILE, recipe_hint_bytes(RECIPE_FOR_KIND[request.kind]))):
        if not path.exists() or path.read_bytes() != content:  # unchanged files keep their mtime
            write_atomic(path, content)
    pending = [i for i in range(request.cases) if not _is_complete(request.kind, out, i)]
    skipped = request.cases - len(pending)
    with tqdm(total=request.cases, initial=skipped, unit=request.unit, desc=f"synth {request.kind}",
              disable=not progress) as bar:
        try:
            _generate(request, pending, bar)
        except OSError as exc:
            where = exc.filename or out
            raise ActionRayError(f"cannot write phantoms to {where}: {exc.strerror or exc}; "
                                 "check free space and permissions, then rerun (finished cases are kept)") from exc
    return CollectionResult(written=len(pending), skipped=skipped)
