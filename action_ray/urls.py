"""Local paths and ``s3://`` URLs behind one interface, with credentials kept out of messages.

Every layer that touches storage (store, ingest, synth, training checkpoints) goes through
:func:`filesystem_for` so that local directories and object stores behave the same, and through
:func:`redact` before a URL or option dictionary is printed or put in an exception.

Credentials come, in order of preference, from the usual AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``),
an instance role, or explicit ``--storage-option KEY=VALUE`` pairs.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

import fsspec

from action_ray.errors import ActionRayError

#: Option names whose values must never be printed.
SECRET_OPTION_NAMES = frozenset(
    {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
     "aws_session_token", "session_token", "access_key", "secret_key"}
)


def is_remote(url: str) -> bool:
    """True for URLs with a protocol other than ``file://`` (e.g. ``s3://bucket/x``)."""
    protocol = fsspec.utils.get_protocol(str(url))
    return protocol not in ("file", "local")


def parse_storage_options(pairs: Iterable[str] | None) -> dict[str, Any]:
    """Turn ``["endpoint_url=http://…", "anon=false"]`` into an fsspec options dict.

    Values ``true``/``false`` become booleans and integers become ints. A dotted key
    ``client_kwargs.region_name=eu-west-1`` becomes a nested dictionary, which is how s3fs
    takes its botocore client options.
    """
    options: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ActionRayError(
                f"--storage-option {pair.split('=')[0]!r} has no value: write it as KEY=VALUE, "
                "e.g. --storage-option endpoint_url=http://127.0.0.1:9000"
            )
        key, value = pair.split("=", 1)
        key = key.strip()
        parsed: Any = value
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        elif re.fullmatch(r"-?\d+", value):
            parsed = int(value)
        target = options
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = parsed
    return options


def storage_options_from_env(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Complete ``options`` for ``url`` with the endpoint from ``AWS_ENDPOINT_URL`` if set.

    s3fs reads the credential variables itself; the endpoint variable is honoured by recent
    botocore releases too, but passing it explicitly makes older installations behave the same.
    """
    merged = dict(options or {})
    if fsspec.utils.get_protocol(str(url)) in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in merged and "endpoint_url" not in merged.get(
            "client_kwargs", {}
        ):
            merged["endpoint_url"] = endpoint
    return merged


def filesystem_for(url: str, storage_options: Mapping[str, Any] | None = None):
    """Return ``(fs, path)`` for a local path or remote URL, ready for fsspec calls."""
    options = storage_options_from_env(url, storage_options)
    fs, path = fsspec.core.url_to_fs(str(url), **options)
    return fs, path


def redact(value: Any) -> Any:
    """Return ``value`` with credentials masked, for logs and error messages.

    Works on option dictionaries (secret keys replaced by ``'***'``), on URLs with user info
    (``s3://KEY:SECRET@bucket`` → ``s3://***@bucket``), and on free text containing the values of
    the AWS credential environment variables.
    """
    if isinstance(value, Mapping):
        return {
            k: ("***" if str(k).lower() in SECRET_OPTION_NAMES else redact(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if not isinstance(value, str):
        return value
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", value)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def storage_advice(exc: BaseException) -> str:
    """What the user should do about ``exc``, raised while reaching a local path or object store.

    s3fs connects lazily, so a misspelt ``--storage-option`` name, missing credentials and an
    unreachable endpoint all surface at the first read, as unrelated-looking exceptions. Callers
    put this advice after the exception's own text in a one-line error.
    """
    name = type(exc).__name__
    if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
        return ("a --storage-option name is not known to the filesystem: check its spelling "
                "(s3: endpoint_url, key, secret, token, anon, client_kwargs.region_name)")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --storage-option key=... secret=...), "
                "or --storage-option anon=true for a public bucket")
    if isinstance(exc, PermissionError):
        return "check the credentials (AWS_* variables or --storage-option key=/secret=) and the bucket policy"
    if isinstance(exc, (NotADirectoryError, IsADirectoryError)):
        return "a file stands where a folder is expected (or the reverse): check the path"
    return "check the endpoint/bucket is reachable (AWS_ENDPOINT_URL or --storage-option endpoint_url=...)"
