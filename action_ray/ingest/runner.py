"""Run an ingest: discover, split, then one dask task per case into the volume store.

Memory stays bounded by design: the driver holds only the list of file names; each task opens
the source and the store itself, loads exactly one case, validates it, writes it with the
store's atomic ``write_case`` and returns a few numbers (:class:`CaseResult`). Dask's local
schedulers run at most ``workers`` tasks at once, so peak memory is about ``workers`` cases.

``scheduler="ray"`` runs the same graph on the Ray cluster in ``RAY_ADDRESS`` (dask-on-Ray),
or on a local Ray of ``workers`` CPUs when none is set. Each case task asks for one CPU, so a
node holds at most as many cases as it has CPUs; a task lost with its node is retried
elsewhere (the store removes that case's leftover before writing it again), and a case whose
task still cannot finish is reported as skipped like any bad case.

Resuming is the default: complete cases are listed once from the store and never re-read,
leftovers of a killed run are removed first, and ``overwrite=True`` is the only way to rewrite
a complete case. A run on a finished store therefore only lists the source and the store.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from action_ray.errors import ActionRayError, CaseError, StoreError
from action_ray.ingest.layouts import Collection, SourceCase, discover
from action_ray.ingest.splits import assign_splits
from action_ray.ingest.validate import AFFINE_TOLERANCE_MM, load_case
from action_ray.io.normalise import BLOCK_KEY
from action_ray.io.recipe_hint import read_recipe_hint
from action_ray.ray_session import connect_or_start, current_node
from action_ray.recipes import (
    DEFAULT_RECIPE_FOR_LAYOUT,
    Recipe,
    load_recipe,
    load_split_file,
)
from action_ray.store import CaseMeta, create_store, open_store
from action_ray.urls import filesystem_for, is_remote, redact, storage_advice

#: Exit code of a run that finished but skipped bad cases (2 is reserved for errors that stop it).
EXIT_SKIPPED_CASES = 3
SCHEDULERS = ("threads", "processes", "sync", "ray")
#: Attempts Ray makes at a case whose worker or node died (the case's own errors are not retried).
RAY_CASE_RETRIES = 3
#: Seconds without a finished case before the Ray path says what it is waiting for.
STALL_WARNING_S = 120.0


@dataclass
class IngestOptions:
    """Everything one ingest run needs; mirrors the command-line flags."""

    src: str
    dst: str
    layout: str
    recipe: str | None = None
    storage_options: dict = field(default_factory=dict)
    workers: int = 2
    scheduler: str = "threads"
    overwrite: bool = False
    seed: int = 0
    split_file: str | None = None
    chunking: str | None = None
    csv: str = "cases.csv"
    affine_tolerance_mm: float = AFFINE_TOLERANCE_MM
    progress: bool = True


@dataclass(frozen=True)
class CaseTask:
    """The picklable description of one case for a worker (no arrays, no open handles)."""

    src_url: str
    dst_url: str
    options_json: str
    case: SourceCase
    split: str
    classes: tuple[tuple[int, str], ...]
    chunking: str
    overwrite: bool
    affine_tolerance_mm: float


@dataclass
class CaseResult:
    """What a worker sends back: a few numbers, never the volume."""

    case_id: str
    status: str                   # "written" | "complete" (already there) | "failed"
    image: str
    reason: str = ""
    bytes_read: int = 0
    voxels: int = 0
    seconds: float = 0.0
    node: str = ""                # where it ran: the Ray node id, or the host name


@dataclass
class IngestReport:
    results: list[CaseResult]
    notes: list[str]
    seconds: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def exit_code(self) -> int:
        return EXIT_SKIPPED_CASES if self.count("failed") else 0

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.results)


# ------------------------------------------------------------------------------- worker side
@lru_cache(maxsize=4)
def _source_fs(src_url: str, options_json: str):
    return filesystem_for(src_url, json.loads(options_json))[0]


@lru_cache(maxsize=4)
def _store(dst_url: str, options_json: str):
    return open_store(dst_url, storage_options=json.loads(options_json))


def ingest_case(task: CaseTask) -> CaseResult:
    """Load, validate and write one case; any problem becomes a ``failed`` result, not a crash."""
    result = _ingest_case(task)
    result.node = current_node()
    return result


def _ingest_case(task: CaseTask) -> CaseResult:
    started = time.perf_counter()
    case = task.case
    try:
        store = _store(task.dst_url, task.options_json)
        if not task.overwrite and store.is_complete(case.case_id):
            return CaseResult(case.case_id, "complete", case.image)
        fs = _source_fs(task.src_url, task.options_json)
        loaded = load_case(fs, case.image, case.label, dict(task.classes), task.affine_tolerance_mm)
        meta = CaseMeta(
            case_id=case.case_id, patient_id=case.patient_id, split=task.split,
            spacing=loaded.spacing, affine=loaded.affine,
            source={"image": fs.unstrip_protocol(case.image),
                    "label": fs.unstrip_protocol(case.label) if case.label else None},
            extra=dict(case.extra),
        )
        store.write_case(meta, loaded.image, loaded.label, chunking=task.chunking, overwrite=task.overwrite)
        return CaseResult(case.case_id, "written", case.image, bytes_read=loaded.bytes_read,
                          voxels=int(loaded.image.size), seconds=time.perf_counter() - started)
    except CaseError as exc:
        reason = str(exc)
    except Exception as exc:  # a bug or an I/O failure in one case must not stop the others
        reason = f"{case.image}: {type(exc).__name__}: {exc}"
    return CaseResult(case.case_id, "failed", case.image, reason=redact(reason),
                      seconds=time.perf_counter() - started)


# ------------------------------------------------------------------------------- driver side
def recipe_hint(options: IngestOptions) -> str | None:
    """The recipe named by an ``action-ray-recipe.txt`` at the source root, if there is one.

    ``action-ray synth`` writes it, so phantoms in ACDC/LiTS layout are ingested with their own
    recipe (classes, normalisation, seeded 70/10/20 split) and not with the real dataset's.
    """

    fs, root = filesystem_for(options.src, options.storage_options)
    return read_recipe_hint(fs, root)


def resolve_recipe(options: IngestOptions) -> Recipe:
    """The recipe named by ``--recipe``, else the source's hint file, else the layout's default."""
    name = options.recipe or recipe_hint(options) or DEFAULT_RECIPE_FOR_LAYOUT.get(options.layout)
    if name is None:
        raise ActionRayError(f"--layout {options.layout} needs --recipe NAME|PATH (classes, modality) — "
                             "e.g. copy datasets/lits/recipe.yaml and edit its classes")
    return load_recipe(name)


def plan_classes(recipe: Recipe, collection: Collection, notes: list[str]) -> tuple[dict[int, str], str]:
    """Classes and modality: dataset.json wins for MSD / nnU-Net folders, else the recipe."""
    classes, modality = recipe.classes, recipe.modality
    if collection.classes is not None:
        if collection.classes != recipe.classes:
            notes.append(f"classes from dataset.json {collection.classes} (recipe {recipe.name!r} had {recipe.classes})")
        classes = collection.classes
        modality = collection.modality or modality
    return classes, modality


def check_existing_splits(existing: dict[str, Any], cases: list[SourceCase], splits: dict[str, str]) -> None:
    """Refuse to resume into a store whose complete cases were split differently."""
    for case in cases:
        info = existing.get(case.case_id)
        if info is not None and info.split != splits[case.patient_id]:
            raise ActionRayError(
                f"case {case.case_id!r} is stored in split {info.split!r} but this run puts patient "
                f"{case.patient_id!r} in {splits[case.patient_id]!r}: use the seed/split file of the first run, "
                "or --overwrite to re-ingest everything"
            )


def read_source(options: IngestOptions) -> tuple[Recipe, Collection]:
    """The recipe and the discovered cases; any storage failure becomes one line naming SRC.

    This is the first place a run touches SRC, so a wrong endpoint, missing credentials or a
    misspelt ``--storage-option`` show up here, before anything is written to DST.
    """
    try:
        recipe = resolve_recipe(options)
        fs, root = filesystem_for(options.src, options.storage_options)
        return recipe, discover(options.layout, fs, root, csv_name=options.csv)
    except ActionRayError:
        raise
    except Exception as exc:
        raise StoreError(redact(f"source {options.src}: cannot list or read it ({type(exc).__name__}: {exc}); "
                                f"{storage_advice(exc)}")) from None


def case_graph(tasks: list[CaseTask]) -> list[Any]:
    """One dask task per case, ``ingest_case(task)``.

    Each ``CaseTask`` goes in wrapped as a delayed value with ``traverse=False``: otherwise dask
    walks every argument (the task's dataclasses, lists and dicts) looking for collections, which
    cost about 1 ms per case on the driver before the first case could start (17 400 calls of
    ``unpack_collections`` for 200 cases).
    """
    import dask

    run = dask.delayed(ingest_case, pure=False)
    return [run(dask.delayed(task, traverse=False)) for task in tasks]


def run_ingest(options: IngestOptions, say: Callable[[str], None] = print) -> IngestReport:
    """Ingest ``options.src`` into ``options.dst``; returns per-case results and notes."""
    import dask
    from dask.diagnostics import ProgressBar

    started = time.perf_counter()
    _store.cache_clear()  # a store re-created at the same URL since the last run in this process
    _source_fs.cache_clear()
    if options.scheduler not in SCHEDULERS:
        raise ActionRayError(f"--scheduler {options.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    recipe, collection = read_source(options)
    notes: list[str] = []
    classes, modality = plan_classes(recipe, collection, notes)
    split_file = load_split_file(options.split_file) if options.split_file else recipe.split_assignment()
    splits, split_notes = assign_splits(collection.cases, seed=options.seed, split_file=split_file,
                                        fractions=recipe.split.fractions)
    notes += split_notes
    chunking = options.chunking or recipe.chunking

    store = create_store(options.dst, name=collection.name or recipe.name, modality=modality, layout=options.layout,
                         classes=classes, storage_options=options.storage_options, exist_ok=True,
                         extra={"recipe": recipe.name,
                                BLOCK_KEY: recipe.normalisation.to_dict()})
    leftovers = store.remove_incomplete()
    if leftovers:
        notes.append(f"removed {len(leftovers)} incomplete case(s) left by an interrupted run: "
                     + ", ".join(sorted(leftovers)[:5]))
    existing = {} if options.overwrite else {info.case_id: info for info in store.list_cases()}
    check_existing_splits(existing, collection.cases, splits)

    results: list[CaseResult] = []
    tasks: list[CaseTask] = []
    options_json = json.dumps(options.storage_options, sort_keys=True)
    for case in collection.cases:
        if case.case_id in existing:
            results.append(CaseResult(case.case_id, "complete", case.image))
        elif case.problem:
            results.append(CaseResult(case.case_id, "failed", case.image, reason=case.problem))
        else:
            tasks.append(CaseTask(options.src, options.dst, options_json, case, splits[case.patient_id],
                                  tuple(classes.items()), chunking, options.overwrite, options.affine_tolerance_mm))
    n_complete = len(existing)
    say(f"{len(collection.cases)} cases found ({options.layout}, recipe {recipe.name}); {n_complete} cases already complete; "
        f"{len(tasks)} to ingest with {options.workers} {options.scheduler} worker(s)")
    if tasks and options.scheduler == "ray":
        results += compute_on_ray(tasks, options, say)
        store.finalize()
    elif tasks:
        delayed = case_graph(tasks)
        compute_kwargs: dict[str, Any] = {"scheduler": options.scheduler}
        if options.scheduler != "sync":
            compute_kwargs["num_workers"] = max(1, options.workers)
        if options.progress:
            with ProgressBar(dt=1.0, out=sys.stderr):
                results += dask.compute(*delayed, **compute_kwargs)
        else:
            results += dask.compute(*delayed, **compute_kwargs)
        # One index object so the next listing (training, info) on S3 costs two requests
        # instead of one per case; a stale index is only slower, never wrong (store docs).
        store.finalize()
    return IngestReport(results, notes, time.perf_counter() - started)


def compute_on_ray(tasks: list[CaseTask], options: IngestOptions, say: Callable[[str], None]) -> list[CaseResult]:
    """Run one ``ingest_case`` per task on Ray through dask-on-Ray; results in task order.

    The graph is submitted with ``ray_persist`` so the driver gets object references back and
    can show progress as cases finish instead of waiting for all of them. A task that Ray
    gives up on (its node or worker died ``RAY_CASE_RETRIES`` times) becomes a ``failed``
    case naming the reason; the run goes on, and a later run picks the case up again.
    """
    import dask
    import ray
    from ray.util.dask import ray_dask_get
    from tqdm import tqdm

    connect_or_start(max(1, options.workers), log=say, reason="ingest: one case per CPU")
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    if len(nodes) > 1 and not (is_remote(options.dst) and is_remote(options.src)):
        say(f"warning: {len(nodes)} nodes run the cases, and SRC or DST is a local path: every node reads "
            "and writes its own disk unless that path is shared storage (NFS); use s3:// (or gs://) otherwise")
    delayed = case_graph(tasks)
    # SPREAD: cases go to every node's disks and network, not to the first node with a free CPU
    refs = list(dask.compute(*delayed, scheduler=ray_dask_get, ray_persist=True,
                             ray_remote_args={"num_cpus": 1, "max_retries": RAY_CASE_RETRIES,
                                              "scheduling_strategy": "SPREAD"}))
    position = {ref: i for i, ref in enumerate(refs)}
    results: list[CaseResult | None] = [None] * len(refs)
    pending = list(refs)
    environment_failures = 0
    last_progress, warned = time.monotonic(), False
    with tqdm(total=len(refs), unit="case", desc="ingest", disable=not options.progress, file=sys.stderr) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if done:
                last_progress = time.monotonic()
            elif not warned and time.monotonic() - last_progress > STALL_WARNING_S:
                say(f"no case has finished for {STALL_WARNING_S:.0f} s; the cluster offers "
                    f"{ray.cluster_resources().get('CPU', 0):g} CPUs and each case task needs 1 (`ray status`)")
                warned = True
            for ref in done:
                i = position[ref]
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # raised before ingest_case ran: an environment fault
                    case = tasks[i].case
                    text = str(exc.cause if exc.cause is not None else exc).strip()
                    cause = (text.splitlines() or [type(exc).__name__])[-1][:300]
                    results[i] = CaseResult(case.case_id, "failed", case.image, reason=redact(
                        f"{case.image}: the Ray task failed on its node ({cause})"))
                    environment_failures += 1
                except Exception as exc:  # the worker or its node was lost, RAY_CASE_RETRIES times
                    case = tasks[i].case
                    reason = (f"{case.image}: the Ray task did not finish after {RAY_CASE_RETRIES} retries "
                              f"({type(exc).__name__}); run the same command again to retry it")
                    results[i] = CaseResult(case.case_id, "failed", case.image, reason=redact(reason))
            bar.update(len(done))
    finished = [r for r in results if r is not None]
    if finished and environment_failures == len(finished):
        raise ActionRayError(f"every ingest task failed on the Ray cluster before reading its case, e.g. "
                             f"{finished[0].reason}; check that the worker nodes have action-ray installed "
                             "(runtime_env or image) and can reach SRC and DST")
    return finished


def format_report(report: IngestReport) -> str:
    """The end-of-run summary: counts, throughput, then one line per skipped case."""
    lines = [f"ingest finished in {report.seconds:.1f} s: {report.count('written')} written, "
             f"{report.count('complete')} already complete, {report.count('failed')} skipped (bad input)"]
    nodes: dict[str, int] = {}
    for result in report.results:
        if result.status == "written" and result.node:
            nodes[result.node] = nodes.get(result.node, 0) + 1
    if len(nodes) > 1:
        lines.append("written per node: " + ", ".join(f"{node[:12]} {count}" for node, count in sorted(nodes.items())))
    if report.bytes_read:
        lines.append(f"read {report.bytes_read / 1e6:.1f} MB ({report.bytes_read / 1e6 / max(report.seconds, 1e-9):.1f} MB/s)")
    lines += [f"note: {note}" for note in report.notes]
    failed = [r for r in report.results if r.status == "failed"]
    if failed:
        width = max(len(r.case_id) for r in failed)
        lines.append("skipped cases:")
        lines.append(f"  {'case'.ljust(width)}  reason")
        lines += [f"  {r.case_id.ljust(width)}  {r.reason}" for r in failed]
        lines.append("fix or replace those files and run the same command again: "
                     "complete cases are kept and only the skipped ones are read")
    return "\n".join(lines)
