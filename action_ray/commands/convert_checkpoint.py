"""``action-ray convert-checkpoint SRC DST --trust-pickle``: rewrite an old checkpoint as plain data.

Checkpoints of format 1 stored the Python and NumPy RNG states as Python objects, so reading
them meant unpickling, which runs whatever code a crafted file carries. Every loader now refuses
such files. This command is the one, explicit way to read one: it unpickles SRC in full, which is
safe only for a file you trust (your own run, say), and writes DST in today's format, which
every command then reads without unpickling. SRC and DST are local checkpoint directories.
"""

from __future__ import annotations

import argparse
import os

from action_ray.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="format-1 checkpoint directory (state.pt + meta.json)")
    parser.add_argument("target", help="new checkpoint directory (must not exist)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="required: SOURCE is unpickled in full, which runs any code hidden in it")


def run(args: argparse.Namespace) -> int:
    from action_ray.runs.checkpoint import convert_checkpoint

    if not args.trust_pickle:
        raise ConfigError(
            "converting unpickles the old state.pt in full, which runs any code hidden in it; "
            "pass --trust-pickle only for a checkpoint whose origin you trust"
        )
    if os.path.exists(args.target):
        raise ConfigError(f"{args.target} already exists; give a new directory for the converted checkpoint")
    checkpoint = convert_checkpoint(args.source, args.target)
    print(f"converted {args.source} (stage {checkpoint.stage}, step {checkpoint.step}) -> {args.target}")
    return 0
