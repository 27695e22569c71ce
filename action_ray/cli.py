"""The ``action-ray`` command: one verb per job, as in nnU-Net.

Each verb lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``.
Those modules keep heavy imports (torch, ray, dask, zarr) inside ``run`` so that
``action-ray --help`` stays instant. An :class:`~action_ray.errors.ActionRayError` is printed
as one line without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from action_ray import __version__
from action_ray.errors import ActionRayError

#: verb -> (module, one-line help). Order is the order shown by ``--help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("action_ray.synth.command", "write synthetic cardiac/liver phantoms in ACDC/LiTS layout"),
    "ingest": ("action_ray.ingest.command", "convert a NIfTI collection (local or s3://) into a Zarr volume store"),
    "info": ("action_ray.store.info_command", "summarise a Zarr volume store"),
    "train": ("action_ray.train.command", "train ACTION (P1 -> P2 -> FT) or a baseline on Ray Train"),
    "tune": ("action_ray.tune_command", "Ray Tune sweep over label ratio, temperatures and methods"),
    "evaluate": ("action_ray.evaluate_command", "per-case Dice/Jaccard/HD95/ASD of a trained run"),
    "predict": ("action_ray.predict_command", "write NIfTI label maps from a checkpoint"),
    "bench": ("action_ray.bench.command", "benchmarks that print ratios measured side by side"),
    "convert-checkpoint": ("action_ray.train.convert_command",
                           "rewrite a trusted format-1 checkpoint so that it loads without unpickling"),
    "demo": ("action_ray.demo", "synth -> ingest -> train -> evaluate on phantoms, end to end"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="action-ray",
        description="Semi-supervised medical image segmentation (ACTION) on Ray clusters.",
    )
    parser.add_argument("--version", action="version", version=f"action-ray {__version__}")
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, (module_name, help_text) in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        sub = verbs.add_parser(verb, help=help_text, description=(module.__doc__ or help_text).strip().split("\n\n")[0])
        module.configure(sub)
        sub.set_defaults(_module=module)
    return parser


def _is_override(token: str) -> bool:
    """``a.b=value``: what the verbs' ``KEY=VALUE`` positionals take (never a ``--flag=x``)."""
    return "=" in token and not token.startswith("-")


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, accepting ``KEY=VALUE`` overrides after a flag as well as before it.

    argparse ends a ``nargs="*"`` positional at the first flag, so ``train x=1 --resume y=2``
    would reject ``y=2``; argparse's own intermixed parsing does not support sub-commands. Such
    leftovers are appended to the verb's ``overrides`` (in command-line order); anything else
    left over is still an error.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all(_is_override(token) for token in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except ActionRayError as exc:
        print(f"action-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"action-ray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
