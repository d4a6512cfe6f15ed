"""Every check of a caller's arguments, in one place: each raises InvalidRequest naming what
is wrong. The API, the backends and the transports call these; nothing else checks arguments."""

from __future__ import annotations

import json
import keyword
import math
import os
from collections.abc import Mapping
from typing import Any

from bridge.core.errors import InvalidRequest


def check_callable(value: object, what: str) -> None:
    if not callable(value):
        raise InvalidRequest(f"{what} must be callable, got {value!r}")


def check_count(value: object, name: str) -> int:
    """A whole number >= 0 (``pool_size``, ``max_output``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def check_name(name: object, what: str = "the name") -> str:
    """A label for people (a backend's name in JupyterLab): text on one line, 1-255 chars."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"{what} must be a non-empty str, got {name!r}")
    if len(name) > 255 or not name.isprintable():
        raise InvalidRequest(f"{what} must be printable text of at most 255 characters")
    return name


def check_timeout(timeout: float | None, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidRequest(f"timeout must be a number of seconds, got {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise InvalidRequest(f"timeout must be positive and finite, got {timeout!r}")
    return float(timeout)


def check_code(code: object, what: str = "code") -> str:
    if not isinstance(code, str):
        raise InvalidRequest(f"{what} must be a str, got {type(code).__name__}")
    return code


def check_inputs(inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise InvalidRequest(f"inputs must be a mapping of names to JSON values, got {inputs!r}")
    for name in inputs:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise InvalidRequest(f"inputs: {name!r} is not a valid Python name")
    from bridge.core import wire  # loads the kernel side's codec: only when inputs are given

    try:
        # Bytes and NumPy arrays travel too, as base64 placeholders the kernel turns back.
        text = wire.codec.dumps(dict(inputs))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"inputs must be JSON values, bytes or NumPy arrays: {exc}") from None
    return json.loads(text) if wire.codec.PLACEHOLDER in text else dict(inputs)


# What exec() takes (Linux): one "KEY=value" string of at most MAX_ARG_STRLEN bytes (32 pages),
# all of argv and the environment within ARG_MAX (a quarter of the stack limit, 2 MiB by
# default), the host's own environment included. A caller's env gets a share of it that leaves
# room for the host's: past these, an ordinary launch would fail with "Argument list too long",
# a refusal a client cannot tell from a busy service, so it is refused here, before anything
# starts, naming env.
MAX_ENV_ENTRY = 128 * 1024 - 1  # bytes of one KEY=value (its NUL makes MAX_ARG_STRLEN)
MAX_ENV_TOTAL = 512 * 1024  # bytes of every KEY=value with its NUL


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """*env* (variables for a kernel's environment) checked: str to str, what a process
    environment can hold, within what exec() takes (MAX_ENV_ENTRY, MAX_ENV_TOTAL)."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidRequest(f"env must be a mapping of str to str, got {type(env).__name__}")
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequest(f"env must map str to str, got {key!r}: {value!r}")
        # What a process environment cannot hold: caught here, not as a failed kernel start.
        if not key or "=" in key or "\x00" in key:
            raise InvalidRequest(
                f"env: {key!r} is not a variable name (it must be non-empty, without '=' or NUL)"
            )
        if "\x00" in value:
            raise InvalidRequest(f"env: the value of {key!r} holds a NUL character")
        try:
            size = len(os.fsencode(key)) + 1 + len(os.fsencode(value))
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"env: {key!r} is not text an environment can hold (a lone surrogate?)"
            ) from None
        if size > MAX_ENV_ENTRY:
            raise InvalidRequest(
                f"env: {key[:64]!r} is {size} bytes as KEY=value; a process environment holds "
                f"at most {MAX_ENV_ENTRY} bytes in one variable"
            )
        total += size + 1
    if total > MAX_ENV_TOTAL:
        raise InvalidRequest(
            f"env is {total} bytes as KEY=value lines; at most {MAX_ENV_TOTAL} bytes are taken"
            " (what is left of what exec() takes is the host's own environment)"
        )
    return dict(env)


def check_paths(paths: object, *, absolute: bool = True) -> tuple[str, ...]:
    """*python_paths* checked (absolute unless they name folders on another host).

    InvalidRequest for anything but a list or tuple of paths.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise InvalidRequest("python_paths must be a sequence of paths, not one path")
    if not isinstance(paths, (list, tuple)):
        raise InvalidRequest(f"python_paths must be a list of paths, got {type(paths).__name__}")
    out = []
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidRequest(f"python_paths entries must be paths, got {path!r}")
        text = os.fspath(path)
        out.append(os.path.abspath(text) if absolute else text)
    return tuple(out)


def check_limits(limits: Mapping[str, Any], fields: Mapping[str, int]) -> dict[str, int | None]:
    """Kernel limits: each key one of *fields*, each value a whole number >= the field's
    minimum, or None (not limited)."""
    if not isinstance(limits, Mapping):
        raise InvalidRequest(f"limits must be a mapping of limit names to numbers, got {limits!r}")
    checked: dict[str, int | None] = {}
    for name, value in limits.items():
        if name not in fields:
            raise InvalidRequest(
                f"limits.{name}: unknown limit; the limits are {', '.join(sorted(fields))}"
            )
        if value is None:
            checked[name] = None
            continue
        least = fields[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidRequest(
                f"limits.{name} must be a whole number >= {least} or null, got {value!r}"
            )
        checked[name] = value
    return checked
