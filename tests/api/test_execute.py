"""What one-off calls and sessions give back: values, MIME bundles, output, errors, inputs."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

import bridge


def test_top_level_return_gives_the_value(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("import math\nreturn {'pi': math.pi}")
    assert r.success and r.error is None
    assert r.value == {"pi": pytest.approx(3.141592653589793)}
    assert r.data["application/json"] == r.value


def test_return_inside_module_level_if_and_loop_ends_the_code(shared_bridge: bridge.Bridge) -> None:
    code = textwrap.dedent(
        """
        for i in range(10):
            if i == 3:
                return i * 10
        print("not reached")
        """
    )
    r = shared_bridge.execute(code)
    assert r.value == 30
    assert r.stdout == ""


def test_last_expression_is_the_value_when_no_return_runs(shared_bridge: bridge.Bridge) -> None:
    assert shared_bridge.execute("x = 2\nx * 21").value == 42
    assert shared_bridge.execute("if False:\n    return 1\n'fallthrough'").value == "fallthrough"


def test_no_value_is_none(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("x = 1")
    assert r.success and r.value is None and r.data == {}
    assert shared_bridge.execute("return").value is None


def test_return_inside_a_function_is_left_alone(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("def f():\n    return 5\nf() + 1")
    assert r.value == 6


def test_return_is_not_caught_by_except_exception(shared_bridge: bridge.Bridge) -> None:
    code = "try:\n    return 'early'\nexcept Exception:\n    pass\nfinally:\n    print('cleanup')"
    r = shared_bridge.execute(code)
    assert r.value == "early" and r.stdout == "cleanup\n"


def test_evaluate(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.evaluate("1 + 2 * 3")
    assert r.success and r.value == 7 and r.data["text/plain"] == "7"


def test_evaluate_rejects_statements(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.evaluate("x = 1")
    assert not r.success and r.error is not None
    assert r.error.ename == "SyntaxError" and "single expression" in r.error.evalue


def test_non_json_value_is_its_repr_and_keeps_every_mime_type(
    shared_bridge: bridge.Bridge,
) -> None:
    r = shared_bridge.execute(
        "class Thing:\n"
        "    def __repr__(self): return 'Thing()'\n"
        "    def _repr_html_(self): return '<b>thing</b>'\n"
        "return Thing()"
    )
    assert r.value == "Thing()"
    assert r.data["text/html"] == "<b>thing</b>" and "application/json" not in r.data
    assert (
        shared_bridge.evaluate("{1: 'int keys are not JSON'}").value
        == "{1: 'int keys are not JSON'}"
    )
    assert shared_bridge.evaluate("float('nan')").value == "nan"
    assert shared_bridge.evaluate("(1, 'a', None)").value == [1, "a", None]


def test_pandas_dataframe_comes_with_html(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("import pandas as pd\nreturn pd.DataFrame({'a': [1, 2]})")
    assert r.success, r.error
    assert "<table" in r.data["text/html"]
    assert "a" in r.value  # the text/plain repr


def test_matplotlib_figure_comes_as_png(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute(
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nreturn fig"
    )
    assert r.success, r.error
    assert "image/png" in r.data and len(r.data["image/png"]) > 100


def test_stdout_stderr_and_outputs_in_order(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute(
        "import sys\nfrom IPython.display import display, HTML\n"
        "print('one')\nsys.stdout.flush()\n"
        "print('warn', file=sys.stderr)\nsys.stderr.flush()\n"
        "display(HTML('<i>x</i>'))\n"
        "print('two')\n"
        "return 3"
    )
    assert r.stdout == "one\ntwo\n" and r.stderr == "warn\n"
    kinds = [(o["output_type"], o.get("name")) for o in r.outputs]
    assert kinds == [
        ("stream", "stdout"),
        ("stream", "stderr"),
        ("display_data", None),
        ("stream", "stdout"),
        ("execute_result", None),
    ]
    assert r.outputs[2]["data"]["text/html"] == "<i>x</i>"


def test_error_has_plain_traceback_and_raise_for_error(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("print('before')\ndef f():\n    return 1 / 0\nf()")
    assert not r.success and r.value is None
    assert r.error is not None and r.error.ename == "ZeroDivisionError"
    assert r.error.evalue == "division by zero"
    assert "\x1b[" not in r.error.traceback
    assert "1 / 0" in r.error.traceback and "ZeroDivisionError" in r.error.traceback
    assert r.outputs[-1]["output_type"] == "error"
    with pytest.raises(bridge.ExecutionError) as info:
        r.raise_for_error()
    message = str(info.value)
    assert "def f():" in message and "before" in message and "ZeroDivisionError" in message
    assert info.value.ename == "ZeroDivisionError"
    assert shared_bridge.execute("return 1").raise_for_error().value == 1


def test_syntax_error_is_a_failed_result(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("def broken(:\n    pass")
    assert not r.success and r.error is not None and r.error.ename == "SyntaxError"


def test_to_dict_has_the_service_shape(shared_bridge: bridge.Bridge) -> None:
    d = shared_bridge.execute("print('x')\nreturn [1]").to_dict()
    assert list(d) == [
        "success",
        "stdout",
        "stderr",
        "result",
        "error",
        "duration_ms",
        "outputs",
        "variables",
        "attestations",
        "truncated",
    ]
    assert d["success"] is True and d["result"] == [1] and d["stdout"] == "x\n"
    assert d["error"] is None and d["duration_ms"] > 0
    failed = shared_bridge.execute("raise ValueError('bad')").to_dict()
    assert isinstance(failed["error"], str) and "ValueError: bad" in failed["error"]


def test_one_off_calls_are_isolated(shared_bridge: bridge.Bridge) -> None:
    for _ in range(3):  # whichever kernel runs it, no name survives a call
        shared_bridge.execute("leaked = 1")
    r = shared_bridge.execute("leaked")
    assert not r.success and r.error is not None and r.error.ename == "NameError"


def test_session_keeps_state_until_closed(shared_bridge: bridge.Bridge) -> None:
    with shared_bridge.session() as s:
        s.execute("x = 41")
        assert s.evaluate("x + 1").value == 42
        r = s.execute("1 / 0")
        assert not r.success
        assert s.evaluate("x").value == 41  # an error aborts nothing queued after it
    with pytest.raises(bridge.BridgeClosed):
        s.execute("x")


def test_inputs_become_globals(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute(
        "return upstream['n'] * 2, label", inputs={"upstream": {"n": 21}, "label": "ok"}
    )
    assert r.value == [42, "ok"]


def test_bytes_and_arrays_as_values_come_back_as_bytes_and_arrays(
    shared_bridge: bridge.Bridge,
) -> None:
    r = shared_bridge.execute(
        "import numpy as np\nreturn np.arange(6, dtype='int16').reshape(2, 3)[:, ::2]"
    )
    assert isinstance(r.value, np.ndarray) and r.value.dtype == np.int16
    assert r.value.tolist() == [[0, 2], [3, 5]]
    assert r.data["text/plain"].startswith("array(")  # the MIME bundle is IPython's, as before
    r = shared_bridge.execute("import numpy as np\nreturn {'b': b'hi', 'a': [np.ones(2)], 'n': 1}")
    assert r.value["b"] == b"hi" and r.value["n"] == 1 and r.value["a"][0].tolist() == [1.0, 1.0]
    # Not bytes, arrays and JSON only: the repr, as for any other object.
    assert shared_bridge.evaluate("(b'x', object)").value == "(b'x', object)"


def test_bytes_and_arrays_as_inputs_arrive_as_bytes_and_arrays(
    shared_bridge: bridge.Bridge,
) -> None:
    grid = np.arange(12, dtype="float32").reshape(3, 4)[:, ::2]  # not contiguous
    r = shared_bridge.execute(
        "return type(blob).__name__, len(blob), str(grid.dtype), list(grid.shape), "
        "float(grid.sum()), given",
        inputs={"blob": b"\x00\x01" * 50, "grid": grid, "given": {"n": 1}},
    )
    assert r.value == ["bytes", 100, "float32", [3, 2], float(grid.sum()), {"n": 1}]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"not a name": 1}, "not a valid Python name"),
        ({"class": 1}, "not a valid Python name"),
        ({"x": object()}, "JSON"),
        ({"x": float("nan")}, "JSON"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_inputs_are_refused(shared_bridge: bridge.Bridge, inputs: object, message: str) -> None:
    with pytest.raises(bridge.InvalidRequest, match=message):
        shared_bridge.execute("pass", inputs=inputs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "positive"),
        ({"timeout": "1"}, "number"),
        ({"timeout": float("inf")}, "finite"),
    ],
)
def test_bad_timeouts_are_refused(
    shared_bridge: bridge.Bridge, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(bridge.InvalidRequest, match=message):
        shared_bridge.execute("pass", **kwargs)  # type: ignore[arg-type]


def test_code_must_be_text(shared_bridge: bridge.Bridge) -> None:
    with pytest.raises(bridge.InvalidRequest, match="code must be a str"):
        shared_bridge.execute(b"print(1)")  # type: ignore[arg-type]


def test_capture_variables(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute(
        "import json\nn = 3\nname = 'x'\nobj = object()\n_hidden = 1\ndef f(): pass\n",
        capture_variables=True,
        inputs={"given": 1},
    )
    assert r.variables is not None
    assert r.variables["n"] == 3 and r.variables["name"] == "x"
    assert r.variables["obj"].startswith("<object object")
    assert not {"json", "_hidden", "f", "given", "attest"} & set(r.variables)
    assert shared_bridge.execute("n = 3").variables is None


def test_execute_file_sets_file_and_main(
    shared_bridge: bridge.Bridge, tmp_path: os.PathLike[str]
) -> None:
    script = os.path.join(tmp_path, "script.py")
    with open(script, "w") as f:
        f.write("import os\ntotal = 5\nprint(__name__)\nreturn os.path.basename(__file__)\n")
    r = shared_bridge.execute_file(script, capture_variables=True)
    assert r.success, r.error
    assert r.value == "script.py" and r.stdout == "__main__\n"
    assert r.variables == {"total": 5}


def test_execute_file_errors(shared_bridge: bridge.Bridge, tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(bridge.InvalidRequest, match="no such file"):
        shared_bridge.execute_file(os.path.join(tmp_path, "missing.py"))
    with pytest.raises(bridge.InvalidRequest, match="directory"):
        shared_bridge.execute_file(tmp_path)


def test_input_raises_instead_of_hanging(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("input('name? ')", timeout=10)
    assert not r.success and r.error is not None
    assert r.error.ename == "StdinNotImplementedError"


def test_attest_records_come_back_in_order(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute(
        "a = attest('doc:1', 'reviewed', contexts=['team:x'], actors='alice',\n"
        "           attributes={'n': 1})\n"
        "attest(['doc:2', 'doc:3'], ['approved'])\n"
        "return a['id']"
    )
    assert r.success, r.error
    first, second = r.attestations
    assert r.value == first["id"]
    assert first["subjects"] == ["doc:1"] and first["predicates"] == ["reviewed"]
    assert first["contexts"] == ["team:x"] and first["actors"] == ["alice"]
    assert first["attributes"] == {"n": 1} and first["source"] == "python"
    assert first["timestamp"].endswith("+00:00")
    assert second["subjects"] == ["doc:2", "doc:3"] and second["contexts"] == []
    assert r.to_dict()["attestations"] == [first, second]


def test_attest_refuses_non_json_attributes(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("attest('a', 'b', attributes={'x': object()})")
    assert not r.success and r.error is not None and r.error.ename == "TypeError"


def test_bridge_works_inside_a_running_event_loop(shared_bridge: bridge.Bridge) -> None:
    import asyncio

    async def inside_a_notebook_cell() -> object:
        return shared_bridge.evaluate("6 * 7").value

    assert asyncio.run(inside_a_notebook_cell()) == 42


def test_top_level_await_runs_on_the_kernel_loop(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("import asyncio\nawait asyncio.sleep(0.01)\nprint('awaited')\n6 * 7")
    assert r.success, r.error
    assert r.value == 42 and r.stdout == "awaited\n"


def test_magics_and_shell_escapes_work(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute(
        "%env BRIDGE_MAGIC=on\nimport os\n!echo from-the-shell\nreturn os.environ['BRIDGE_MAGIC']"
    )
    assert r.success, r.error
    assert r.value == "on" and "from-the-shell" in r.stdout


def test_matplotlib_figures_made_by_a_call_are_shown(shared_bridge: bridge.Bridge) -> None:
    r = shared_bridge.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nNone")
    assert r.success, r.error
    assert any("image/png" in o.get("data", {}) for o in r.outputs)


def test_an_internal_error_of_the_runtime_still_answers(shared_bridge: bridge.Bridge) -> None:
    with shared_bridge.session() as s:
        s.execute(
            "import bridge_runtime._execute as ex\n"
            "ex._saved = ex.Hooks.run\n"
            "def broken(self, code, meta):\n"
            "    raise RuntimeError('runtime bug')\n"
            "ex.Hooks.run = broken"
        )
        r = s.execute("1", timeout=10)  # answered at once, not after the timeout
        assert not r.success and r.error is not None and "runtime bug" in r.error.evalue
    # The session's kernel (with the broken runtime) is shut down when the session ends.
