"""The ``action-ray`` command: one verb per job, as in nnU-Net.

Each verb lives in its own module of :mod:`action_ray.commands`, exposing ``configure(parser)``
and ``run(args) -> int``: the verb parses its options and calls the Python API of the package
that does the work. Those modules keep heavy imports (torch, ray, dask, zarr) inside ``run``, on
purpose, so that ``action-ray --help`` stays instant.

Exit codes: 0 success; 2 a user error (an :class:`~action_ray.errors.ActionRayError`, a bad
command line, or an input path that does not exist or cannot be read), printed as one line that
names the file or key; 1 an internal error (anything else: a bug, or Ray or the machine failing), printed as one line that says
so; 3 is left to verbs that finish with some inputs rejected (``ingest``); 130 on Ctrl-C.
``--debug`` (anywhere on the command line, or ``ACTION_RAY_DEBUG=1``) adds the traceback. Every
message goes through :func:`action_ray.urls.redact`, so no credential reaches the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from typing import Sequence

from action_ray import __version__
from action_ray.errors import ActionRayError

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: errors of an input path the user named (the message names the path)
USER_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
DEBUG_HELP = "show the traceback of an error; accepted anywhere on the command line (also ACTION_RAY_DEBUG=1)"

#: verb -> (module, one-line help). Order is the order shown by ``--help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("action_ray.commands.synth", "write synthetic cardiac/liver phantoms in ACDC/LiTS layout"),
    "ingest": ("action_ray.commands.ingest", "convert a NIfTI collection (local or s3://) into a Zarr volume store"),
    "info": ("action_ray.commands.info", "summarise a Zarr volume store"),
    "train": ("action_ray.commands.train", "train ACTION (P1 -> P2 -> FT) or a baseline on Ray Train"),
    "tune": ("action_ray.commands.tune", "Ray Tune sweep over label ratio, temperatures and methods"),
    "evaluate": ("action_ray.commands.evaluate", "per-case Dice/Jaccard/HD95/ASD of a trained run"),
    "predict": ("action_ray.commands.predict", "write NIfTI label maps from a checkpoint"),
    "bench": ("action_ray.commands.bench", "benchmarks that print ratios measured side by side"),
    "convert-checkpoint": ("action_ray.commands.convert_checkpoint",
                           "rewrite a trusted format-1 checkpoint so that it loads without unpickling"),
    "demo": ("action_ray.commands.demo", "synth -> ingest -> train -> evaluate on phantoms, end to end"),
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
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, (module_name, help_text) in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        sub = verbs.add_parser(verb, help=help_text, description=_description(module.__doc__, help_text))
        module.configure(sub)
        sub.set_defaults(_module=module)
    return parser


def _description(doc: str | None, fallback: str) -> str:
    """A verb's ``--help`` description: its docstring's first paragraph without the leading
    ``action-ray VERB``: tag the docstrings carry for readers of the source."""
    first = (doc or fallback).strip().split("\n\n")[0]
    return re.sub(r"^``action-ray [\w -]+``:\s*", "", first)


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


def _path_error_message(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    where = exc.filename if exc.filename is not None else str(exc)
    return f"{reason}: {where} (check the path and its permissions)"


def main(argv: Sequence[str] | None = None) -> int:
    tokens = list(sys.argv[1:] if argv is None else argv)
    # --debug is taken wherever it stands (``action-ray bench quality ... --debug``), so no verb
    # or nested sub-command has to declare it
    debug = "--debug" in tokens or os.environ.get("ACTION_RAY_DEBUG", "") not in ("", "0")
    parser = build_parser()
    args = parse_command_line(parser, [t for t in tokens if t != "--debug"])
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return EXIT_USER_ERROR
    prefix = f"action-ray {args.command}"
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ActionRayError, *USER_PATH_ERRORS) as exc:
        message = str(exc) if isinstance(exc, ActionRayError) else _path_error_message(exc)
        _report(f"{prefix}: error: {message}", debug)
        return EXIT_USER_ERROR
    except Exception as exc:  # unexpected (a bug, or Ray/the machine): one line, traceback on request
        first_line = (str(exc).strip().splitlines() or [""])[0]
        _report(f"{prefix}: internal error: {type(exc).__name__}: {first_line} (unexpected: rerun with "
                f"--debug for the traceback, and report it unless it is about this machine or cluster)", debug)
        return EXIT_INTERNAL_ERROR


def _report(line: str, debug: bool) -> None:
    """Print the one-line message (and, with --debug, the traceback above it), redacted."""
    from action_ray.urls import redact  # lazy: fsspec loads only when there is an error to print

    if debug:
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
    print(redact(line), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
