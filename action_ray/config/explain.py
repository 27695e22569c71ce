"""Validation errors a person can act on: pydantic's report turned into one line per problem.

Why: pydantic names a location tuple and a constraint; a user who wrote ``ft.num_querys=64``
on a command line needs the dotted key, where it came from (the file, the preset or an
override) and what to write instead (the closest valid key, or the section it lives in).
The wording is part of the interface: tests and documentation quote it.
"""

from __future__ import annotations

import difflib
import re
from typing import Sequence

from pydantic import ValidationError

from action_ray.config.schema import all_keys, section_model


def explain_validation_error(exc: ValidationError, origin: str, override_keys: set[str]) -> str:
    """Turn pydantic's errors into one line per problem, each naming the dotted key.

    ``origin`` says where the values came from (a file, ``preset NAME``, ``defaults``);
    ``override_keys`` are the dotted keys given as ``a.b=value`` overrides, which are blamed
    on the override rather than on the file.
    """
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key = ".".join(str(p) for p in loc)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'{_source(key, origin, override_keys)}: {_suggest(loc)}")
        elif not key or (err["type"] == "value_error" and isinstance(err.get("input"), dict)):
            # a check across keys (the message names them), or one key checked by its section
            # ("num_workers: ..."), which is named in full here
            field = re.match(r"(\w+): ", message)
            if key and field:
                dotted = f"{key}.{field.group(1)}"
                message = dotted + message[len(field.group(1)):]
                mentioned = dotted
            else:
                mentioned = next((k for k in override_keys if k in message), "")
            lines.append(f"{message}{_source(mentioned, origin, override_keys)}")
        else:
            lines.append(
                f"config key '{key}'{_source(key, origin, override_keys)}: "
                f"value {err.get('input')!r} is invalid: {message}"
            )
    return "; ".join(lines)


def _suggest(parts: Sequence[str | int]) -> str:
    """What to write instead of an unknown key: close spellings, the section it lives in, or
    the valid keys of the section it was written in."""
    *parents, leaf = [str(p) for p in parts]
    section = section_model(parents)
    valid = list(section.model_fields) if section is not None else []
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.6)
    prefix = ".".join(parents) + "." if parents else ""
    if close:
        return "did you mean " + " or ".join(repr(prefix + c) for c in close) + "?"
    elsewhere = [k for k in all_keys() if k.rsplit(".", 1)[-1] == leaf]
    if elsewhere:
        return "that key lives at " + " or ".join(repr(k) for k in elsewhere)
    return f"valid keys here: {', '.join(valid)}"


def _source(key: str, origin: str, override_keys: set[str]) -> str:
    """`` (from an override)`` or `` (in ORIGIN)``; nothing for the defaults themselves."""
    if key in override_keys:
        return " (from an override)"
    return "" if origin == "defaults" else f" (in {origin})"
