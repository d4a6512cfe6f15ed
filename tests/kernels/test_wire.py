"""The value codec both ends share (kernels/bridge_runtime/_wire.py): no kernel needed."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.core.wire import codec as wire


def test_json_values_go_as_they_are() -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": []}}
    data, buffers = wire.encode(value)
    assert data is value and buffers == []  # checked, not copied


def test_binary_values_become_placeholders_and_buffers() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data, buffers = wire.encode({"raw": b"\x00\x01", "view": memoryview(b"xyz"), "a": array})
    assert data["raw"] == {"__bridge_buffer__": 0, "kind": "bytes"}
    assert data["a"] == {"__bridge_buffer__": 2, "kind": "ndarray", "dtype": "<f4", "shape": [2, 3]}
    assert [bytes(b) for b in buffers[:2]] == [b"\x00\x01", b"xyz"]
    assert bytes(buffers[2]) == array.tobytes()  # the array's own bytes: no base64, no list
    back = wire.decode(data, [bytes(b) for b in buffers])
    assert back["raw"] == b"\x00\x01" and back["view"] == b"xyz"
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], array)


def test_inline_lines_carry_binary_as_base64() -> None:
    line = wire.dumps({"id": 1, "result": {"blob": b"hi", "n": np.int64(3)}})
    assert '"base64": "aGk="' in line
    assert wire.loads(line) == {"id": 1, "result": {"blob": b"hi", "n": 3}}


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"x": float("nan")}, ValueError, "NaN"),
        ({"x": float("inf")}, ValueError, "NaN"),
        ({"x": {1, 2}}, TypeError, "set is not a JSON value"),
        ({"x": object()}, TypeError, "object is not a JSON value"),
        ({"x": np.array([object()])}, TypeError, "dtype object"),
    ],
)
def test_what_cannot_travel_is_refused(value: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        wire.encode(value)


def test_a_placeholder_without_its_buffer_is_an_error() -> None:
    with pytest.raises(ValueError, match="buffer 3"):
        wire.decode({"__bridge_buffer__": 3, "kind": "bytes"}, [])


def test_error_info_leaves_out_the_given_files() -> None:
    def inner() -> None:
        raise KeyError("k")

    try:
        inner()
    except KeyError as exc:
        info = wire.error_info(exc, skip=(__file__,))
        full = wire.error_info(exc)
    assert info["ename"] == "KeyError" and info["evalue"] == "'k'"
    assert "inner" not in info["traceback"] and "in inner" in full["traceback"]
