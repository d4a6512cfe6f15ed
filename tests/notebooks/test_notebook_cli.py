"""``kernel-bridge test PATH...``, run as a separate process as a user would."""

from __future__ import annotations

import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
from nbfiles import read_nb, stored, stream, write_nb

from bridge.notebooks.cli import Progress
from bridge.notebooks.report import NotebookResult


def kb_test(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "test", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_a_failing_run_prints_reports_a_table_and_junit_xml_and_exits_1(tmp_path: Path) -> None:
    write_nb(tmp_path / "nbs" / "good.ipynb", "print('fine')")
    write_nb(tmp_path / "nbs" / "sub" / "bad.ipynb", "x = 1", "x.missing")
    write_nb(
        tmp_path / "nbs" / "params.ipynb",
        ("n = 1", ["parameters"]),
        "assert n == 3, n",
    )
    write_nb(tmp_path / "nbs" / "other.ipynb", "1", kernelspec={"name": "ir", "language": "R"})
    write_nb(tmp_path / "nbs" / ".ipynb_checkpoints" / "bad-checkpoint.ipynb", "1 / 0")

    done = kb_test("nbs", "--workers", "2", "--param", "n=3", "--junit-xml", "r.xml", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "nbs/sub/bad.ipynb failed: cells[1] raised AttributeError" in out
    assert "-> 1  x.missing" in out
    table = out[out.index("NOTEBOOK") :].splitlines()
    assert table[0].split() == ["NOTEBOOK", "STATUS", "TIME", "FAILING", "CELL"]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:5]}
    assert rows["nbs/good.ipynb"][0] == "passed"
    assert rows["nbs/params.ipynb"][0] == "passed"
    assert rows["nbs/sub/bad.ipynb"][0] == "FAILED" and rows["nbs/sub/bad.ipynb"][-1] == "cells[1]"
    assert rows["nbs/other.ipynb"][0] == "ERROR"
    assert table[5].startswith("4 notebooks: 2 passed, 1 failed, 1 error in ")
    # Not a terminal: the progress is one line per finished notebook, on stderr.
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and progress[-1].startswith("[4/4] ")

    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {
        "nbs/good.ipynb",
        "nbs/params.ipynb",
        "nbs/sub/bad.ipynb",
        "nbs/other.ipynb",
    }
    failure = cases["nbs/sub/bad.ipynb"].find("failure")
    assert failure is not None
    assert failure.get("message") == (
        "cells[1] raised AttributeError: 'int' object has no attribute 'missing'"
    )
    assert "x.missing" in (failure.text or "")
    error = cases["nbs/other.ipynb"].find("error")
    assert error is not None and "language R" in error.get("message", "")


def test_a_passing_run_compares_writes_and_exits_0(tmp_path: Path) -> None:
    write_nb(tmp_path / "a.ipynb", stored("print('same')", stream("same\n")))
    done = kb_test("a.ipynb", "--compare", "--write", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("1 notebook: 1 passed, 0 failed")
    nbformat.validate(read_nb(tmp_path / "out" / "a.ipynb"))


def test_bad_paths_are_a_usage_error_exit_2(tmp_path: Path) -> None:
    done = kb_test("missing", cwd=tmp_path)
    assert done.returncode == 2 and "no such file or folder: missing" in done.stderr
    (tmp_path / "empty").mkdir()
    done = kb_test("empty", cwd=tmp_path)
    assert done.returncode == 2 and "no notebooks found in empty" in done.stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_progress_is_one_bar_redrawn_in_place() -> None:
    screen = Terminal()
    progress = Progress(2, screen)
    progress.update(NotebookResult(path=Path("a.ipynb"), name="a.ipynb", status="failed"))
    progress.update(NotebookResult(path=Path("b.ipynb"), name="b.ipynb"))
    first, second = screen.getvalue().split("\r\x1b[K")[1:]
    assert first == "[" + "#" * 15 + "-" * 15 + "] 1/2 1 failed  a.ipynb"
    assert second == "[" + "#" * 30 + "] 2/2 1 failed  b.ipynb\n"
