"""Options that several verbs share, defined once so they read and behave the same everywhere.

``--storage-option KEY=VALUE`` (repeatable) passes fsspec/s3fs settings to every ``s3://`` URL a
verb touches; before this module each verb declared it with its own ``dest`` and help text.
"""

from __future__ import annotations

import argparse
from typing import Any

STORAGE_OPTION_HELP = ("fsspec/s3fs option for s3:// URLs, repeatable (e.g. endpoint_url=http://127.0.0.1:9000); "
                       "prefer the AWS_* environment variables for credentials")


def add_storage_option(parser: argparse.ArgumentParser, help_text: str = STORAGE_OPTION_HELP) -> None:
    """Declare ``--storage-option`` (stored in ``args.storage_options``)."""
    parser.add_argument("--storage-option", dest="storage_options", action="append", default=[],
                        metavar="KEY=VALUE", help=help_text)


def storage_options_from(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed ``--storage-option`` pairs of a verb (an empty dict when none were given)."""
    from action_ray.urls import parse_storage_options

    return parse_storage_options(getattr(args, "storage_options", None))
