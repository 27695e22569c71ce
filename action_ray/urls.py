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

#: Storage-option names whose values are shown as they are; every other value is masked. An
#: allow-list, not a deny-list: a secret under a name nobody listed (``SSECustomerKey``,
#: ``sse_customer_key``, a provider's own token field) must not reach a log or a file.
PUBLIC_OPTION_NAMES = frozenset(
    {"endpoint_url", "region_name", "region", "anon", "use_ssl", "verify", "requester_pays",
     "default_block_size", "default_cache_type", "default_fill_cache", "version_aware",
     "cache_regions", "max_pool_connections", "connect_timeout", "read_timeout", "signature_version",
     "addressing_style", "retries", "max_attempts", "mode", "client_kwargs", "config_kwargs",
     "s3_additional_kwargs", "s3", "use_listings_cache", "listings_expiry_time", "skip_instance_cache",
     "profile", "cache_type", "block_size"}
)
#: Environment variable names whose values are treated as secrets in free text.
SECRET_ENV_PATTERN = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
#: Shorter values are not masked in free text (they would mask ordinary words and numbers).
MIN_SECRET_LENGTH = 6


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


def with_protocol(url: str, path: str) -> str:
    """``path``, an fsspec path of the filesystem of ``url``, as a URL again.

    fsspec (and pyarrow, under Ray Train) hand back paths without their scheme
    (``bucket/runs/r1/checkpoint_3``); passed on as they are, another call would read them as
    local paths. This puts the scheme of ``url`` back; local paths come back unchanged.
    """
    if "://" in str(url) and "://" not in str(path):
        return f"{str(url).split('://', 1)[0]}://{path}"
    return str(path)


def _secret_env_values() -> list[str]:
    values = [value for name, value in os.environ.items()
              if SECRET_ENV_PATTERN.search(name) and len(value) >= MIN_SECRET_LENGTH]
    return sorted(set(values), key=len, reverse=True)  # longest first: no partial leftovers


def secret_option_values(options: Mapping[str, Any] | None) -> list[str]:
    """Every string value of (possibly nested) storage options that is not under a public name:
    what free text must not show when those options were given on the command line."""
    found: list[str] = []
    for key, value in (options or {}).items():
        if isinstance(value, Mapping):
            found += secret_option_values(value)
        elif str(key).lower() not in PUBLIC_OPTION_NAMES and isinstance(value, str) and len(value) >= 4:
            found.append(value)
    return found


def redact(value: Any, extra_secrets: Iterable[str] = ()) -> Any:
    """Return ``value`` with credentials masked, for logs, files and error messages.

    * option dictionaries: every value is ``'***'`` except under the public names of
      :data:`PUBLIC_OPTION_NAMES` (nested dictionaries such as ``client_kwargs`` follow the same
      rule);
    * URLs with user info: ``s3://KEY:SECRET@bucket`` → ``s3://***@bucket``;
    * free text: the values of environment variables whose names look like credentials
      (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ``*_PASSWORD``, …) are masked wherever they appear.
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if str(key).lower() not in PUBLIC_OPTION_NAMES:
                out[key] = "***"
            elif isinstance(item, (Mapping, list, tuple)):
                out[key] = redact(item, extra_secrets)
            else:
                out[key] = redact(item, extra_secrets) if isinstance(item, str) else item
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, extra_secrets) for v in value)
    if not isinstance(value, str):
        return value
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", value)
    for secret in sorted({*_secret_env_values(), *extra_secrets}, key=len, reverse=True):
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
