"""``action-ray bench NAME``: run one benchmark; each prints its table and the ratios it was built to show."""

from __future__ import annotations

import argparse
import importlib

from action_ray.errors import ActionRayError

#: name -> module with ``configure(parser)`` and ``run(args) -> int``.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "phantoms": ("action_ray.bench.phantoms", "CPU-s per phantom volume and class fractions vs targets"),
    "codecs": ("action_ray.bench.codecs", "store compressors: ratio, write MB/s, read-one-slice ms"),
    "ingest": ("action_ray.bench.ingest", "ingest MB/s vs raw read+write, and peak RSS vs collection size"),
    "catalog": ("action_ray.bench.catalog", "listing, info and the training read plan: seconds per case vs store size"),
    "reads": ("action_ray.bench.reads", "read_slice and whole-case reads: sharded vs one object per slice"),
    "step": ("action_ray.bench.step", "per-stage step time vs a bare UNet forward/backward"),
    "stream": ("action_ray.bench.stream", "Ray Data samples/s vs a direct read loop vs step consumption"),
    "scale": ("action_ray.bench.scale", "P2/FT step at 1, 2, 4 workers and its communication share; --model: GPUs"),
    "quality": ("action_ray.bench.quality", "methods x label ratios Dice/HD95 table on cardiac phantoms"),
    "variants": ("action_ray.bench.variants", "training variants x draws, val Dice at fixed FT steps (no Ray)"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    names = parser.add_subparsers(dest="benchmark", metavar="NAME")
    for name, (module_name, help_text) in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        sub = names.add_parser(name, help=help_text, description=help_text)
        module.configure(sub)
        sub.set_defaults(_bench=module)


def run(args: argparse.Namespace) -> int:
    module = getattr(args, "_bench", None)
    if module is None:
        raise ActionRayError(
            "name a benchmark: action-ray bench {" + ",".join(BENCHMARKS) + "} (see --help)"
        )
    return int(module.run(args) or 0)
