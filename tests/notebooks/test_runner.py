"""The notebook runner: real notebooks on real kernels of the shared pool."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbfiles import read_nb, result, stored, stream, write_nb

import bridge
from bridge.notebooks.compare import Sanitizer, diff_outputs, output_lines, read_sanitizer_file
from bridge.notebooks.options import NotebookOptions, parse_param
from bridge.notebooks.reading import read_notebook
from bridge.notebooks.runner import run_notebook


@pytest.mark.asyncio
async def test_a_passing_notebook_runs_in_its_folder_with_tags_widgets_and_comms(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    (tmp_path / "helper.py").write_text("VALUE = 7\n")
    folder = str(tmp_path)  # pytest gives it resolved, as os.getcwd() is
    path = write_nb(
        tmp_path / "ok.ipynb",
        nbformat.v4.new_markdown_cell("# a title"),
        "import os\nprint(os.getcwd())",
        "import helper\nhelper.VALUE * 6",
        stored(("print('skipped')", ["skip-execution"]), stream("kept\n")),
        "   \n",
        ("1 / 0", ["raises-exception"]),
        "from IPython.display import HTML, display\ndisplay(HTML('<i>x</i>'))",
        "import ipywidgets\nipywidgets.IntSlider(3)",
        "from comm import create_comm\ncreate_comm(target_name='no-such-front-end').send({})\n"
        "print('comm sent')",
    )
    r = await run_notebook(abridge, path)
    assert r.status == "passed", r.report()
    assert r.passed and r.report() == "" and r.failed_cell is None
    cells = r.notebook.cells
    assert cells[1].outputs[0]["text"] == folder + "\n"
    # Run as Jupyter runs a cell: the value is plain IPython output, no bridge JSON added.
    assert cells[2].outputs == [result({"text/plain": "42"}, count=2)]
    assert cells[3].outputs == [stream("kept\n")] and cells[3].execution_count == 1
    assert cells[4].execution_count is None  # an empty cell does not run
    assert cells[5].outputs[0]["ename"] == "ZeroDivisionError"
    assert cells[6].outputs[0]["data"]["text/html"] == "<i>x</i>"
    assert "application/vnd.jupyter.widget-view+json" in cells[7].outputs[0]["data"]
    assert cells[8].outputs[0]["text"] == "comm sent\n"
    counts = [c.execution_count for c in cells if c.cell_type == "code"]
    assert counts == [1, 2, 1, None, 3, 4, 5, 6]
    assert r.cells_run == 6 and r.code_cells == 8
    assert r.notebook.metadata["language_info"]["name"] == "python"
    nbformat.validate(r.notebook)


@pytest.mark.asyncio
async def test_a_failing_cell_is_reported_with_number_source_outputs_and_plain_traceback(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    path = write_nb(
        tmp_path / "fail.ipynb",
        "total = 10",
        nbformat.v4.new_markdown_cell("then it breaks"),
        "print('about to divide')\nratio = total / 0\nprint('not here')",
        "print('never runs')",
    )
    r = await run_notebook(abridge, path, options=NotebookOptions(root=tmp_path))
    assert r.status == "failed" and r.failed_cell == 2
    failure = r.failures[0]
    assert failure.kind == "error" and failure.execution_count == 2
    report = r.report()
    assert report.startswith(
        "fail.ipynb failed: cells[2] raised ZeroDivisionError: division by zero\n"
        "(2 of 3 code cells ran)"
    )
    assert "cells[2], In [2]:" in report
    assert "   1  print('about to divide')\n-> 2  ratio = total / 0\n   3  print('not here')" in (
        report
    )
    assert "outputs:\nabout to divide\n" in report
    assert "ZeroDivisionError" in failure.traceback and "\x1b[" not in report
    assert r.notebook.cells[3].execution_count is None  # the run stopped at the failure
    with pytest.raises(bridge.NotebookFailed) as info:
        r.raise_for_failure()
    assert str(info.value) == report and info.value.result is r


@pytest.mark.asyncio
async def test_a_raises_exception_cell_that_does_not_raise_fails(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    path = write_nb(tmp_path / "r.ipynb", ("print('fine')", ["raises-exception"]), "x = 1")
    r = await run_notebook(abridge, path)
    assert r.status == "failed" and r.failures[0].kind == "no-exception"
    assert "cells[0] is tagged raises-exception but raised nothing" in r.report()
    assert "outputs:\nfine" in r.report()


@pytest.mark.asyncio
async def test_a_cell_past_the_timeout_is_interrupted_and_fails_the_notebook(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    slow = write_nb(
        tmp_path / "slow.ipynb", "import time\nprint('waiting', flush=True)\ntime.sleep(60)"
    )
    stubborn = write_nb(
        tmp_path / "stubborn.ipynb",
        "import time\nwhile True:\n    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        pass",
    )
    r = await run_notebook(abridge, slow, options=NotebookOptions(timeout=1))
    assert r.status == "failed" and r.failures[0].kind == "timeout"
    assert "cells[0] ran past the cell timeout of 1 s and was interrupted" in r.report()
    assert "waiting" in r.report() and "KeyboardInterrupt" in r.report()
    assert r.duration < 30
    r = await run_notebook(abridge, stubborn, options=NotebookOptions(timeout=1))
    assert r.failures[0].kind == "timeout"
    assert "ignored the interrupt, so its kernel was killed" in r.headline


@pytest.mark.asyncio
async def test_a_notebook_that_kills_its_kernel_fails_and_the_next_one_runs(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    killer = write_nb(
        tmp_path / "kill.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "1"
    )
    after = write_nb(tmp_path / "after.ipynb", "print('still fine')")
    r = await run_notebook(abridge, killer)
    assert r.status == "failed" and r.failures[0].kind == "kernel-died"
    assert "the kernel died while running cells[0] (killed by signal SIGKILL)" in r.report()
    r = await run_notebook(abridge, after)
    assert r.passed, r.report()


def test_parameters_parse_as_python_literals_else_strings() -> None:
    assert parse_param("n=3") == ("n", 3)
    assert parse_param("xs=[1, 2]") == ("xs", [1, 2])
    assert parse_param("name=alice") == ("name", "alice")
    assert parse_param("s='quoted'") == ("s", "quoted")
    assert parse_param("url=http://x/?a=b") == ("url", "http://x/?a=b")
    for bad in ("novalue", "1x=2", "=3"):
        with pytest.raises(bridge.InvalidRequest, match="NAME=VALUE"):
            parse_param(bad)


@pytest.mark.asyncio
async def test_parameters_are_injected_after_the_parameters_cell(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    path = write_nb(
        tmp_path / "p.ipynb",
        "before = 1",
        ("n = 5\nname = 'default'", ["parameters"]),
        "print(name, [i * i for i in range(n)])",
    )
    r = await run_notebook(abridge, path, options=NotebookOptions(params={"n": 3, "name": "given"}))
    assert r.passed, r.report()
    injected = r.notebook.cells[2]
    assert injected.metadata["tags"] == ["injected-parameters"]
    assert injected.source == "# Parameters\nn = 3\nname = 'given'\n"
    assert r.notebook.cells[3].outputs[0]["text"] == "given [0, 1, 4]\n"
    plain = write_nb(tmp_path / "plain.ipynb", "print(1)")
    r = await run_notebook(abridge, plain, options=NotebookOptions(params={"n": 3}))
    assert r.passed and len(r.notebook.cells) == 1  # no parameters cell: nothing injected


@pytest.mark.asyncio
async def test_compare_passes_when_only_volatile_parts_differ(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    png = "iVBORw0KGgo="
    path = write_nb(
        tmp_path / "same.ipynb",
        stored("print(object())", stream("<object object at 0x7f00deadbeef>\n"), count=7),
        stored(
            "import datetime\nprint(datetime.datetime.now().isoformat(), 'run-id-', id(1))",
            stream("2020-01-01T00:00:00.123456 run-id- 1234\n"),
        ),
        stored("6 * 7", result({"text/plain": "42"}, count=99)),
        stored(("print('different')", ["ignore-output"]), stream("whatever\n")),
        stored(("print('different')", ["nbval-ignore-output"]), stream("anything\n")),
        stored(
            "from IPython.display import Image\n"
            "Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + bytes(20), format='png')",
            result({"image/png": png, "text/plain": "<IPython.core.display.Image object>"}),
        ),
        "print('never run when saved: not compared')",
        stored("print('a', flush=True)\nprint('b')", stream("a\n"), stream("b\n")),
    )
    options = NotebookOptions(compare=True, sanitizers=[Sanitizer.of(r"id- \d+", "id- N")])
    r = await run_notebook(abridge, path, options=options)
    assert r.passed, r.report()


@pytest.mark.asyncio
async def test_compare_shows_a_readable_diff_of_each_cell_that_differs(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    path = write_nb(
        tmp_path / "differs.ipynb",
        stored("print('goodbye')", stream("hello\n")),
        stored("print('same')", stream("same\n"), count=2),
        stored("{'a': 1}", result({"text/plain": "{'a': 2}"}, count=3)),
    )
    r = await run_notebook(abridge, path, options=NotebookOptions(compare=True, root=tmp_path))
    assert r.status == "failed"
    assert [f.index for f in r.failures] == [0, 2] and r.failed_cell == 0
    report = r.report()
    assert report.startswith(
        "differs.ipynb failed: cells[0]: outputs differ from the stored ones (and 1 more cell)"
    )
    assert "outputs differ (- stored, + fresh):\n--- stored\n+++ fresh\n" in report
    assert "-hello\n+goodbye" in report
    assert "-{'a': 2}\n+{'a': 1}" in report


def test_outputs_compare_by_nbval_rules() -> None:
    error = {"output_type": "error", "ename": "KeyError", "evalue": "'x'", "traceback": ["..."]}
    widget = {
        "output_type": "display_data",
        "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "abc"}},
        "metadata": {},
    }
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    svg = {"output_type": "display_data", "data": {"image/svg+xml": "<svg/>"}, "metadata": {}}
    lines = output_lines([stream("a"), error, stream("b\n"), widget, png, svg], [])
    # Streams of one name merge wherever they are; errors by name and message; PNG data and
    # widget model ids are not compared, SVG is text and is.
    assert lines == [
        *("[ename]", "KeyError", "[evalue]", "'x'"),
        *("[image/svg+xml]", "<svg/>", "[stdout]", "ab"),
    ]
    assert diff_outputs([stream(["x\n", "y\n"])], [stream("x\ny\n")], []) == ""
    # The order of outputs of different keys does not count; of one key it does.
    out, err = stream("o\n"), stream("e\n", "stderr")
    assert diff_outputs([out, err], [err, out], []) == ""
    assert diff_outputs([stream("1\n"), err, stream("2\n")], [stream("1\n2\n"), err], []) == ""
    # A progress bar's carriage returns and backspaces leave what a terminal shows.
    assert diff_outputs([stream("10%\r50%\r100%\n")], [stream("100%\n")], []) == ""
    assert diff_outputs([stream("ab\bc\n")], [stream("ac\n")], []) == ""
    # A missing image counts as nothing, a missing stream does not.
    assert diff_outputs([png, out], [out], []) == ""
    assert "-[stdout]" in diff_outputs([out], [], [])


def test_sanitizers_come_from_nbval_files_and_bad_ones_are_refused(tmp_path: Path) -> None:
    ini = tmp_path / "sanitize.cfg"
    # nbval's format: several regex/replace pairs in a section, read in order.
    ini.write_text("[ids]\nregex: id=\\d+\nreplace: id=N\n\nregex: N\nreplace: M\n")
    first, second = read_sanitizer_file(ini)
    assert second(first("id=42 and id=7")) == "id=M and id=M"
    ini.write_text("[broken]\nreplace: x\n")
    with pytest.raises(bridge.InvalidRequest, match=r"has no 'regex: \.\.\.' line"):
        read_sanitizer_file(ini)
    with pytest.raises(bridge.InvalidRequest, match="bad sanitizer regex"):
        Sanitizer.of("(")


@pytest.mark.asyncio
async def test_executed_notebooks_are_written_valid_even_when_they_fail(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    good = write_nb(src / "sub" / "good.ipynb", "print('out')", "'value'")
    bad = write_nb(src / "bad.ipynb", "print('partial')", "1 / 0", "2")
    options = NotebookOptions(write_dir=tmp_path / "out", root=src)
    r = await run_notebook(abridge, good, options=options)
    assert r.passed and r.written == tmp_path / "out" / "sub" / "good.ipynb"
    written = read_nb(r.written)
    nbformat.validate(written)
    assert written.cells[1].outputs[0]["data"] == {"text/plain": "'value'"}
    r = await run_notebook(abridge, bad, options=options)
    assert r.status == "failed" and r.written is not None
    written = read_nb(r.written)
    nbformat.validate(written)
    assert written.cells[0].outputs[0]["text"] == "partial\n"
    assert written.cells[1].outputs[0]["ename"] == "ZeroDivisionError"
    assert f"the executed notebook is at {r.written}" in r.report()


NBFORMAT_3 = {
    "nbformat": 3,
    "nbformat_minor": 0,
    "metadata": {"name": "old"},
    "worksheets": [
        {
            "metadata": {},
            "cells": [
                {"cell_type": "heading", "level": 1, "metadata": {}, "source": ["Old"]},
                {
                    "cell_type": "code",
                    "collapsed": False,
                    "input": ["x = 6 * 7\n", "print(x)"],
                    "language": "python",
                    "metadata": {},
                    "outputs": [{"output_type": "stream", "stream": "stdout", "text": ["42\n"]}],
                    "prompt_number": 1,
                },
            ],
        }
    ],
}
NBFORMAT_4_0 = {
    "nbformat": 4,
    "nbformat_minor": 0,
    "metadata": {},
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {"collapsed": False},
            "outputs": [],
            "source": ["print('four-oh')"],
        },
    ],
}


@pytest.mark.asyncio
async def test_old_notebook_formats_run_and_are_written_as_nbformat_4(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    v3 = tmp_path / "v3.ipynb"
    v3.write_text(json.dumps(NBFORMAT_3))
    v40 = tmp_path / "v40.ipynb"
    v40.write_text(json.dumps(NBFORMAT_4_0))
    options = NotebookOptions(compare=True, write_dir=tmp_path / "out", root=tmp_path)
    r = await run_notebook(abridge, v3, options=options)
    assert r.passed, r.report()  # its stored output, upgraded, matches the fresh one
    assert r.written is not None and read_nb(r.written).nbformat == 4
    r = await run_notebook(abridge, v40, options=options)
    assert r.passed, r.report()
    assert r.notebook.cells[0].outputs[0]["text"] == "four-oh\n"
    nbformat.validate(read_nb(r.written))


@pytest.mark.parametrize(
    ("kernelspec", "language_info"),
    [
        (None, None),
        ({"name": "conda-env-analysis-py", "display_name": "Python [analysis]"}, None),
        ({"name": "my-env", "display_name": "mine"}, {"name": "python"}),
    ],
)
@pytest.mark.asyncio
async def test_any_python_kernel_maps_to_the_bridge_kernel(
    abridge: bridge.AsyncBridge, tmp_path: Path, kernelspec: object, language_info: object
) -> None:
    extra = {"language_info": language_info} if language_info else {}
    path = write_nb(tmp_path / "k.ipynb", "print('ran')", kernelspec=kernelspec, **extra)
    r = await run_notebook(abridge, path)
    assert r.passed, r.report()


@pytest.mark.parametrize(
    ("kernelspec", "message"),
    [
        (
            {"name": "julia-1.9", "display_name": "Julia 1.9"},
            "asks for the kernel spec 'julia-1.9', which is not installed",
        ),
        (
            {"name": "ir", "display_name": "R", "language": "R"},
            "asks for the kernel spec 'ir' (language R); kernel-bridge runs Python kernels only",
        ),
    ],
)
@pytest.mark.asyncio
async def test_a_kernel_the_bridge_cannot_provide_is_a_clear_error(
    abridge: bridge.AsyncBridge, tmp_path: Path, kernelspec: object, message: str
) -> None:
    path = write_nb(tmp_path / "other.ipynb", "1", kernelspec=kernelspec)
    r = await run_notebook(abridge, path, options=NotebookOptions(root=tmp_path))
    assert r.status == "error" and r.cells_run == 0
    assert message in r.report()
    assert r.report().startswith("other.ipynb asks for")


@pytest.mark.asyncio
async def test_an_installed_kernel_spec_of_another_language_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "jupyter" / "kernels" / "fake-r"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text('{"argv": ["R"], "display_name": "R", "language": "R"}')
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    path = write_nb(tmp_path / "r.ipynb", "1", kernelspec={"name": "fake-r", "display_name": "R"})
    async with bridge.AsyncBridge(pool_size=0) as b:  # the check comes before any kernel
        r = await run_notebook(b, path, options=NotebookOptions(root=tmp_path))
    assert r.status == "error" and r.cells_run == 0
    assert r.report() == (
        "r.ipynb asks for the kernel spec 'fake-r' (language R); "
        "kernel-bridge runs Python kernels only"
    )


def test_unreadable_notebooks_are_invalid(tmp_path: Path) -> None:
    (tmp_path / "bad.ipynb").write_text("{not json")
    with pytest.raises(bridge.InvalidNotebook, match="is not a notebook nbformat can read"):
        read_notebook(tmp_path / "bad.ipynb")
    (tmp_path / "empty.ipynb").write_text("{}")
    with pytest.raises(bridge.InvalidNotebook, match="is not a notebook nbformat can read"):
        read_notebook(tmp_path / "empty.ipynb")
    with pytest.raises(bridge.InvalidNotebook, match="no such file"):
        read_notebook(tmp_path / "missing.ipynb")


@pytest.mark.asyncio
async def test_bad_execution_metadata_is_a_clear_error(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    path = write_nb(tmp_path / "m.ipynb", "1", execution={"timeout": "soon"})
    r = await run_notebook(abridge, path, options=NotebookOptions(root=tmp_path))
    assert r.status == "error"
    assert r.report() == "m.ipynb: metadata.execution.timeout must be a positive number, got 'soon'"
