"""Compare training variants on the validation split, in-process, several draws each.

``action-ray bench variants --store S --variant NAME="KEY=VALUE ..." ... --draws 0,1,2`` trains
every (variant, draw) with the project's own stage step functions, in one process per run and
without Ray, on the store's train slices held in memory, and scores the student on the **val**
split at fixed FT steps. It prints val Dice mean ± sd over draws per variant and step, and the
per-draw values, and writes them to ``<out>/variants.md`` and one JSON per run (a finished run is
not repeated, so an interrupted comparison resumes). Variants that differ in FT settings only
share their P1 + P2: the first run of a draw keeps its P2 end state in ``<out>/p2-cache`` and the
others continue from it, with the same result as training it again.

Why a second way to train: the defaults of the quality preset are chosen by comparing variants
over several labelled-subset draws (docs/tune.md), dozens of runs on two CPU cores. Without Ray
start-up, Ray Data and checkpoint round trips a run costs only its steps, and it is exactly
repeatable: slices are drawn by a seeded generator (seed = ``train.seed``), crops and
augmentations by the steps' own generator. What it leaves out is the Ray data order, so its
numbers match a `train` run of the same config in distribution, not bit for bit; tables that
users read as results come from `bench quality`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from action_ray.errors import ConfigError
from action_ray.files import write_atomic

DEFAULT_PRESET = "cpu-quality"


@dataclass(frozen=True)
class RunSpec:
    """One run: a variant's overrides on the preset, for one labelled-subset draw."""

    variant: str
    draw: int
    preset: str
    store: str
    overrides: tuple[str, ...]
    eval_steps: tuple[int, ...]
    pretrain_cache: str | None = None  # folder of P2 end states shared by variants that differ in FT only

    @property
    def key(self) -> str:
        return f"{self.variant}--draw{self.draw}"


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """``name=KEY=VALUE KEY=VALUE`` (or just ``name``) -> (name, overrides)."""
    name, _, rest = text.partition("=")
    name = name.strip()
    if not name or any(c in name for c in "/ \\"):
        raise ConfigError(f"--variant {text!r}: give NAME=\"KEY=VALUE ...\" with a name of letters, digits, - or _")
    overrides = tuple(shlex.split(rest))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--variant {name}: {item!r} is not KEY=VALUE")
    return name, overrides


# ------------------------------------------------------------------------------ one run
def _dice_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    from action_ray.metrics import dice

    return [dice(pred == c, gt == c) for c in range(1, num_classes)]


def train_variant(spec: RunSpec) -> dict[str, Any]:
    """Train one run in this process (one thread) and return its val Dice curve."""
    import torch

    from action_ray.config import load_config
    from action_ray.data.resize import resize_slices
    from action_ray.data.splits import label_split
    from action_ray.evaluation.inference import predict_slices
    from action_ray.io.normalise import normalise_array, resolve_spec
    from action_ray.store import open_store
    from action_ray.train.loop import compose_batch, stage_batch_sizes
    from action_ray.train.state import build_state, handoff_p1_to_p2, handoff_p2_to_ft
    from action_ray.train.steps import bind_step
    from action_ray.train.steps.common import crop_batch

    torch.set_num_threads(1)
    started = time.perf_counter()
    config = load_config(spec.preset, [f"data.store={spec.store}", f"train.seed={spec.draw}",
                                       f"data.split_seed={spec.draw}", *spec.overrides])
    if config.data.dims != 2:
        raise ConfigError("bench variants trains 2-D slice models only (data.dims=2)")
    store = open_store(spec.store)
    norm = resolve_spec(store.dataset_meta, None)
    size = (config.data.slice_size, config.data.slice_size)
    num_classes = max(store.classes) + 1

    def slices(case_ids: Sequence[str], with_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
        images, labels = [], []
        for case_id in case_ids:
            image, label = store.read_volume(case_id)
            image = normalise_array(image, norm, store.case(case_id).stats, case_id)
            image, label = resize_slices(image, label if with_label else None, size)
            images.append(image)
            labels.append(label)
        stacked = np.concatenate(images)[:, None].astype(np.float32)
        return stacked, (np.concatenate(labels).astype(np.int64) if with_label else None)

    split = label_split(store, config.data.label_ratio, config.data.labelled_patients, config.data.split_seed)
    labelled_images, labelled_labels = slices(split.labelled_cases, True)
    unlabelled_images = slices(split.unlabelled_cases, False)[0] if split.unlabelled_cases else None
    val = [(store.read_volume(c.case_id), c) for c in store.list_cases(split="val", has_label=True)]
    if not val:
        raise ConfigError(f"the store {spec.store} has no labelled val cases to score variants on")
    rng = np.random.default_rng(spec.draw)

    def validate(network: torch.nn.Module) -> list[float]:
        network.eval()
        scores = []
        for (image, label), info in val:
            normalised = normalise_array(image, norm, info.stats, info.case_id)
            scores.append(_dice_per_class(predict_slices(network, normalised, size).labels, label, num_classes))
        network.train()
        return np.mean(scores, axis=0).tolist()

    def batch(stage: str) -> dict[str, torch.Tensor]:
        n_lab, n_unl = stage_batch_sizes(config, stage)
        rows = rng.integers(0, len(labelled_images), n_lab)
        parts = {"labelled": {"image": torch.from_numpy(labelled_images[rows]),
                              "label": torch.from_numpy(labelled_labels[rows])}}
        if n_unl:
            if unlabelled_images is None:
                raise ConfigError(f"variant {spec.variant}: method={config.method} needs unlabelled patients")
            parts["unlabelled"] = {"image": torch.from_numpy(unlabelled_images[rng.integers(0, len(unlabelled_images), n_unl)])}
        return compose_batch(stage, parts)

    result: dict[str, Any] = {"variant": spec.variant, "draw": spec.draw, "overrides": list(spec.overrides),
                              "labelled_patients": len(split.labelled_patients), "curve": {}}
    state = None
    stages = list(config.stages or [])
    cache = None
    if spec.pretrain_cache and stages[:3] == ["p1", "p2", "ft"]:
        cache = os.path.join(spec.pretrain_cache, f"p2-{pretrain_key(config)}.pt")
        if os.path.exists(cache):
            state = build_state(config, num_classes, "cpu", "p2", rank=0)
            result["p2_student"] = _load_pretrain(cache, state, rng)
            result["p2_from_cache"] = True
            stages = stages[2:]
    for stage in stages:
        if state is None:
            state = build_state(config, num_classes, "cpu", stage, rank=0)
        elif stage == "p2":
            state = handoff_p1_to_p2(state)
        else:
            state = handoff_p2_to_ft(state)
        step = bind_step(config, stage)
        iterations = config.stage(stage).iterations
        while state.step < iterations:
            step(state, crop_batch(state, batch(stage), config.data))
            if stage == "ft" and (state.step in spec.eval_steps or state.step == iterations):
                result["curve"][str(state.step)] = validate(state.model.student)
        if stage == "p2" and "ft" in stages:
            result["p2_student"] = validate(state.model.student)
            if cache:
                os.makedirs(spec.pretrain_cache, exist_ok=True)
                _save_pretrain(cache, state, rng, result["p2_student"])
    result["seconds"] = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------- P2 cache
#: config sections that P1 and P2 never read: variants that differ only here share their P2
FT_ONLY_KEYS = ("ft.", "mean_teacher.", "eval.", "schedule.ft.")


def pretrain_key(config: Any) -> str:
    """16 hex digits naming the P2 end state of ``config`` (its seed, split and P1/P2 settings).

    Why: most variants in a defaults comparison change FT only (thresholds, weights, teacher
    mode); their P1 + P2 (1800 of 3000 steps in cpu-quality) are bit for bit the same run, so
    the first run of a draw saves its P2 end state and the others start from it.
    """
    from action_ray.config import flatten

    flat = {k: v for k, v in flatten(config.to_dict()).items() if not k.startswith(FT_ONLY_KEYS)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_pretrain(path: str, state: Any, rng: np.random.Generator, p2_student: list[float]) -> None:
    """The P2 end state as plain tensors and JSON (loaded with ``weights_only=True``)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"state": state.state_dict(), "numpy_rng": json.dumps(rng.bit_generator.state),
                "p2_student": p2_student}, buffer)
    write_atomic(path, buffer.getvalue())


def _load_pretrain(path: str, state: Any, rng: np.random.Generator) -> list[float]:
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True)
    state.load_state_dict(saved["state"])
    rng.bit_generator.state = json.loads(saved["numpy_rng"])
    return list(saved["p2_student"])


# -------------------------------------------------------------------------------- table
def _mean_sd(values: Sequence[float]) -> str:
    """Val Dice in %, mean ± sd, as every other table of the project shows it."""
    from action_ray.tuning.results import fmt_mean_sd, mean_sd

    return fmt_mean_sd(mean_sd(values), 100.0)


def variants_table(results: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """Markdown: per variant, val Dice (mean of the foreground classes) mean ± sd per FT step."""
    steps = sorted({int(s) for r in results for s in r["curve"]})
    lines = ["| variant | draws | P2 student | " + " | ".join(f"FT {s}" for s in steps) + " | per draw (last) |",
             "|---|---:|---:|" + "---:|" * len(steps) + "---|"]
    for name in names:
        runs = sorted((r for r in results if r["variant"] == name), key=lambda r: r["draw"])
        if not runs:
            continue
        p2 = _mean_sd([float(np.mean(r["p2_student"])) for r in runs if "p2_student" in r])
        cells = [_mean_sd([float(np.mean(r["curve"][str(s)])) for r in runs if str(s) in r["curve"]]) for s in steps]
        last = [f"{100 * float(np.mean(r['curve'][str(max(map(int, r['curve'])))])):.1f}" for r in runs]
        lines.append(f"| {name} | {len(runs)} | {p2} | " + " | ".join(cells) + f" | {', '.join(last)} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ command
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="volume store with labelled train and val cases")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help=f"training preset (default {DEFAULT_PRESET})")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="KEY=VALUE ..."',
                        help="a variant: overrides on the preset (repeat; a bare NAME means none)")
    parser.add_argument("--draws", default="0,1,2", help="labelled-subset draws (train.seed = data.split_seed)")
    parser.add_argument("--eval-at", default="300,600,900,1200", help="FT steps at which val Dice is measured")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one core each)")
    parser.add_argument("--out", default="bench-variants", help="per-run JSON and variants.md")


def run(args: argparse.Namespace) -> int:
    variants = [parse_variant(v) for v in (args.variant or ["preset"])]
    names = [name for name, _ in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"--variant names must be unique, got {names}")
    draws = [int(d) for d in str(args.draws).split(",") if d.strip()]
    eval_steps = tuple(int(s) for s in str(args.eval_at).split(",") if s.strip())
    from action_ray.config import load_config

    for name, overrides in variants:  # fail on a bad key now, not in a worker minutes later
        load_config(args.preset, [f"data.store={args.store}", *overrides])
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "p2-cache")
    os.makedirs(cache, exist_ok=True)
    specs = [RunSpec(name, draw, args.preset, args.store, overrides, eval_steps, cache)
             for name, overrides in variants for draw in draws]
    done: list[dict[str, Any]] = []
    todo = []
    for spec in specs:
        path = os.path.join(args.out, f"{spec.key}.json")
        if os.path.exists(path):
            with open(path) as handle:
                done.append(json.load(handle))
        else:
            todo.append(spec)
    started = time.perf_counter()
    print(f"{len(specs)} runs ({len(done)} already done), {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(train_variant, spec): spec for spec in todo}
        for future in futures:
            spec = futures[future]
            result = future.result()
            write_atomic(os.path.join(args.out, f"{spec.key}.json"), json.dumps(result))
            done.append(result)
            last = result["curve"][str(max(map(int, result["curve"])))]
            print(f"  {spec.key}: val Dice {float(np.mean(last)):.3f} ({result['seconds']:.0f} s)", flush=True)
    command = "action-ray bench variants " + shlex.join(
        ["--store", args.store, "--preset", args.preset, "--draws", args.draws, "--eval-at", args.eval_at,
         *[f"--variant={v}" for v in (args.variant or [])]])
    report = "\n".join([f"# bench variants ({args.preset}), val split", "", f"Command: `{command}`",
                        f"Wall time: {(time.perf_counter() - started) / 60:.1f} min for {len(todo)} new runs.", "",
                        "Val Dice in %, mean of the foreground classes, mean ± sd over draws.", "",
                        variants_table(done, names)])
    print(report)
    with open(os.path.join(args.out, "variants.md"), "w") as handle:
        handle.write(report)
    return 0
