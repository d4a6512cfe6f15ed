"""OutputCollector on a fake message stream: how IOPub messages become nbformat outputs."""

from __future__ import annotations

from bridge.core.results import OutputCollector, strip_ansi


def _stream(name: str, text: str) -> tuple[str, dict[str, str]]:
    return "stream", {"name": name, "text": text}


def test_consecutive_streams_merge_and_others_split() -> None:
    c = OutputCollector()
    for msg_type, content in [
        _stream("stdout", "a"),
        _stream("stdout", "b\n"),
        _stream("stderr", "e\n"),
        _stream("stdout", "c\n"),
    ]:
        c.add(msg_type, content)
    r = c.result(code="", reply={"status": "ok"}, duration_ms=1)
    assert [o["text"] for o in r.outputs] == ["ab\n", "e\n", "c\n"]
    assert r.stdout == "ab\nc\n" and r.stderr == "e\n"


def test_clear_output_and_wait() -> None:
    c = OutputCollector()
    c.add(*_stream("stdout", "old\n"))
    c.add("clear_output", {"wait": False})
    c.add(*_stream("stdout", "kept\n"))
    c.add("clear_output", {"wait": True})
    assert len(c.outputs) == 1  # wait=True clears only when the next output arrives
    c.add(*_stream("stdout", "new\n"))
    r = c.result(code="", reply={"status": "ok"}, duration_ms=1)
    assert [o["text"] for o in r.outputs] == ["new\n"]
    assert r.stdout == "old\nkept\nnew\n"  # stdout is everything printed, cleared or not


def test_update_display_data_replaces_in_place() -> None:
    c = OutputCollector()
    c.add(
        "display_data",
        {"data": {"text/plain": "1"}, "metadata": {}, "transient": {"display_id": "d"}},
    )
    c.add(*_stream("stdout", "between\n"))
    c.add(
        "update_display_data",
        {"data": {"text/plain": "2"}, "metadata": {}, "transient": {"display_id": "d"}},
    )
    r = c.result(code="", reply={"status": "ok"}, duration_ms=1)
    assert r.outputs[0] == {
        "output_type": "display_data",
        "data": {"text/plain": "2"},
        "metadata": {},
    }


def test_value_prefers_json_then_text() -> None:
    c = OutputCollector()
    c.add(
        "execute_result",
        {"data": {"text/plain": "{'a': 1}", "application/json": {"a": 1}}, "execution_count": 1},
    )
    assert c.result(code="", reply={"status": "ok"}, duration_ms=1).value == {"a": 1}
    c = OutputCollector()
    c.add("execute_result", {"data": {"text/plain": "<obj>"}, "execution_count": 1})
    assert c.result(code="", reply={"status": "ok"}, duration_ms=1).value == "<obj>"


def test_cap_keeps_value_and_error_and_marks_truncation() -> None:
    c = OutputCollector(max_output=10)
    c.add(*_stream("stdout", "0123456789ABCDEF"))
    c.add(*_stream("stdout", "more"))
    c.add("display_data", {"data": {"text/plain": "dropped"}})
    c.add("execute_result", {"data": {"text/plain": "'v'"}, "execution_count": 1})
    c.add("error", {"ename": "E", "evalue": "v", "traceback": ["tb"]})
    r = c.result(
        code="",
        reply={"status": "error", "ename": "E", "evalue": "v", "traceback": ["\x1b[31mtb\x1b[0m"]},
        duration_ms=1,
    )
    assert r.truncated
    assert r.stdout.startswith("0123456789\n[kernel-bridge: output truncated")
    assert [o["output_type"] for o in r.outputs] == ["stream", "execute_result", "error"]
    assert r.error is not None and r.error.traceback == "tb"


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[0;31mValueError\x1b[0m: bad") == "ValueError: bad"
