"""Values of backend calls and events on the wire: JSON, with binary data beside it.

A comm message carries a JSON ``data`` dict and a list of binary buffers. ``bytes``,
``bytearray``, ``memoryview`` and NumPy arrays go into the buffers, and the JSON holds a
placeholder where each one was::

    {"__bridge_buffer__": 0, "kind": "ndarray", "dtype": "<f8", "shape": [1000, 3]}

so a 10 MB array travels as 10 MB, not as base64 or a JSON list of numbers. On a channel with
no buffers (the newline-JSON protocol on stdin/stdout) the placeholder holds the bytes as
base64 in ``"base64"`` instead of an index.

Both ends use this file: the kernel imports it, and the host loads the same file (see
``bridge/core/wire.py``), so the two cannot disagree. Standard library only; NumPy is imported
only when an array is received.
"""

from __future__ import annotations

import base64
import json
import sys
import traceback
from typing import Any

PLACEHOLDER = "__bridge_buffer__"


def _is_ndarray(obj: Any) -> bool:
    numpy = sys.modules.get("numpy")  # if numpy was never imported, obj is no array
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _binary(obj: Any, buffers: list[Any] | None) -> dict[str, Any]:
    if _is_ndarray(obj):
        if obj.dtype.hasobject or obj.dtype.fields is not None:
            raise TypeError(
                f"a NumPy array of dtype {obj.dtype} cannot travel; "
                "send arrays of numbers, or arr.tolist()"
            )
        import numpy

        flat = numpy.ascontiguousarray(obj).reshape(-1).view(numpy.uint8)
        meta: dict[str, Any] = {
            "kind": "ndarray",
            "dtype": obj.dtype.str,
            "shape": list(obj.shape),
        }
        data: Any = memoryview(flat)
    else:
        meta = {"kind": "bytes"}
        data = memoryview(obj).cast("B") if isinstance(obj, memoryview) else obj
    if buffers is None:
        meta["base64"] = base64.b64encode(data).decode("ascii")
        return {PLACEHOLDER: None, **meta}
    buffers.append(data)
    return {PLACEHOLDER: len(buffers) - 1, **meta}


def _dumps(value: Any, buffers: list[Any] | None) -> tuple[str, bool]:
    """JSON text of *value* and whether it had binary parts (into *buffers*, or base64)."""
    found = False

    def default(obj: Any) -> Any:
        nonlocal found
        if isinstance(obj, (bytes, bytearray, memoryview)) or _is_ndarray(obj):
            found = True
            return _binary(obj, buffers)
        item = getattr(obj, "item", None)  # a NumPy scalar: its Python number
        if item is not None and type(obj).__module__ == "numpy":
            return item()
        raise TypeError(
            f"{type(obj).__name__} is not a JSON value "
            "(send dicts, lists, str, numbers, bool, None, bytes or NumPy arrays)"
        )

    try:
        return json.dumps(value, default=default, allow_nan=False), found
    except ValueError as exc:
        if "JSON compliant" in str(exc):
            raise ValueError("NaN and infinity are not JSON values") from None
        raise


def encode(value: Any) -> tuple[Any, list[Any]]:
    """(JSON-ready value, buffers) for *value*; TypeError or ValueError if it cannot travel.

    Binary parts become placeholders and buffers; NumPy scalars become numbers. NaN and
    infinity are refused: JSON has no such numbers.

    >>> encode({"a": b"xy"})
    ({'a': {'__bridge_buffer__': 0, 'kind': 'bytes'}}, [b'xy'])
    """
    value, buffers, _ = encode_sized(value)
    return value, buffers


def encode_sized(value: Any) -> tuple[Any, list[Any], int]:
    """``encode``, and how many bytes travel (the JSON text and the buffers): what a stream's
    window counts."""
    buffers: list[Any] = []
    text, found = _dumps(value, buffers)
    size = len(text) + sum(memoryview(b).nbytes for b in buffers)
    # Pure JSON goes as it is (the check was the point); only placeholders need the copy.
    return (json.loads(text) if found else value), buffers, size


def dumps(value: Any) -> str:
    """One line of the newline-JSON protocol: binary parts inline, as base64."""
    return _dumps(value, None)[0]


def _restore(placeholder: dict[str, Any], buffers: list[Any]) -> Any:
    index = placeholder[PLACEHOLDER]
    if index is None:
        raw: Any = base64.b64decode(placeholder.get("base64", ""))
    else:
        try:
            raw = buffers[index]
        except (IndexError, TypeError):
            raise ValueError(
                f"message refers to buffer {index!r}, which it does not carry"
            ) from None
    if placeholder.get("kind") == "ndarray":
        try:
            import numpy
        except ImportError:
            raise TypeError("a NumPy array arrived, but numpy is not installed here") from None
        array = numpy.frombuffer(raw, dtype=numpy.dtype(placeholder["dtype"]))
        return array.reshape(placeholder["shape"]).copy()  # writable, and not tied to a frame
    return bytes(raw)


def decode(value: Any, buffers: list[Any]) -> Any:
    """Undo ``encode``: placeholders become bytes and arrays again."""
    if isinstance(value, dict):
        if PLACEHOLDER in value:
            return _restore(value, buffers)
        return {key: decode(item, buffers) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item, buffers) for item in value]
    return value


def has_binary(value: Any, _depth: int = 0) -> bool:
    """Whether *value* is, or holds in its lists, tuples and dicts, bytes or a NumPy array."""
    if isinstance(value, (bytes, bytearray, memoryview)) or _is_ndarray(value):
        return True
    if _depth > 100:
        return False
    if isinstance(value, (list, tuple)):
        return any(has_binary(item, _depth + 1) for item in value)
    if isinstance(value, dict):
        return any(has_binary(item, _depth + 1) for item in value.values())
    return False


def inline(value: Any, buffers: list[Any]) -> Any:
    """*value* (JSON from ``encode``) with each placeholder's buffer inline as base64: what
    travels where there are no buffers (a JSON body). Nothing is decoded, so no NumPy needed.
    ValueError for a placeholder naming a buffer that is not there."""
    if isinstance(value, dict):
        if PLACEHOLDER in value:
            index = value[PLACEHOLDER]
            if index is None:
                return value
            try:
                raw = buffers[index]
            except (IndexError, TypeError):
                raise ValueError(f"a value names buffer {index!r}, which is not there") from None
            data = base64.b64encode(memoryview(raw).cast("B")).decode("ascii")
            return {**value, PLACEHOLDER: None, "base64": data}
        return {key: inline(item, buffers) for key, item in value.items()}
    if isinstance(value, list):
        return [inline(item, buffers) for item in value]
    return value


def loads(line: str) -> Any:
    """Parse one line of the newline-JSON protocol."""
    value = json.loads(line)
    return decode(value, []) if PLACEHOLDER in line else value


def error_info(exc: BaseException, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{"ename", "evalue", "traceback"}`` of *exc*; frames in files *skip* are left out."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in skip:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": "".join(lines)}
