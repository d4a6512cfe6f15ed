"""``pytest --nb``: the plugin as users load it (by its entry point), in a pytest of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
from nbfiles import read_nb, stored, stream, write_nb


def run_pytest(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """pytest in *cwd* (no ini file there: this repository's settings do not apply), without
    this venv's property-testing plugins (over a second of imports, nothing to do here)."""
    unrelated = ("-p", "no:schemathesis", "-p", "no:hypothesispytest")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *unrelated, *args],
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def junit(path: Path) -> dict[str, tuple[str, str, str]]:
    """{test name: (outcome, message, text)} from a JUnit XML report."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            out[case.get("name", "")] = ("passed", "", "")
        else:
            out[case.get("name", "")] = ("failed", problem.get("message", ""), problem.text or "")
    return out


MEET = (
    "import pathlib, time\n"
    "pathlib.Path('{me}.flag').touch()\n"
    "deadline = time.monotonic() + 20\n"
    "while not pathlib.Path('{other}.flag').exists():\n"
    "    assert time.monotonic() < deadline, 'the other notebook never ran alongside'\n"
    "    time.sleep(0.05)\n"
    "print('met')"
)


def test_each_notebook_is_one_item_with_its_own_report_and_workers_run_at_once(
    tmp_path: Path,
) -> None:
    # a_meet and b_meet wait for each other: they pass only if two notebooks run at once.
    write_nb(tmp_path / "a_meet.ipynb", MEET.format(me="a", other="b"))
    write_nb(tmp_path / "b_meet.ipynb", MEET.format(me="b", other="a"))
    write_nb(tmp_path / "c_pass.ipynb", "print('ok')", ("1 / 0", ["raises-exception"]))
    write_nb(
        tmp_path / "sub" / "d_fail.ipynb",
        "print('before')",
        "items = []\nitems[3]",
        "print('never')",
    )
    write_nb(tmp_path / "e_kill.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    # nbmake's per-notebook metadata sets this notebook's cell timeout to 1 s.
    write_nb(tmp_path / "f_slow.ipynb", "import time\ntime.sleep(60)", execution={"timeout": 1})
    write_nb(tmp_path / "g_julia.ipynb", "1", kernelspec={"name": "julia-1.9"})
    write_nb(tmp_path / "h_skip.ipynb", ("raise SystemExit('skipped')", ["skip-execution"]))
    write_nb(tmp_path / ".ipynb_checkpoints" / "c_pass-checkpoint.ipynb", "1 / 0")
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert True\n")

    done = run_pytest(tmp_path, "--nb", "--nb-workers", "2", "--junit-xml", "report.xml")
    assert done.returncode == 1, done.stdout + done.stderr
    results = junit(tmp_path / "report.xml")
    assert {name: outcome for name, (outcome, _, _) in results.items()} == {
        "a_meet.ipynb": "passed",
        "b_meet.ipynb": "passed",
        "c_pass.ipynb": "passed",
        "d_fail.ipynb": "failed",
        "e_kill.ipynb": "failed",
        "f_slow.ipynb": "failed",
        "g_julia.ipynb": "failed",
        "h_skip.ipynb": "passed",
        "test_plain": "passed",
    }
    _, message, text = results["d_fail.ipynb"]
    assert message == "cells[1] raised IndexError: list index out of range"
    assert "sub/d_fail.ipynb failed: cells[1] raised IndexError" in text
    assert "   1  items = []\n-> 2  items[3]" in text and "\x1b[" not in text
    assert results["e_kill.ipynb"][1] == (
        "the kernel died while running cells[0] (killed by signal SIGKILL)"
    )
    assert results["f_slow.ipynb"][1] == (
        "cells[0] ran past the cell timeout of 1 s and was interrupted"
    )
    assert "'julia-1.9', which is not installed" in results["g_julia.ipynb"][1]
    out = done.stdout
    assert "FAILED sub/d_fail.ipynb::d_fail.ipynb - cells[1] raised IndexError" in out
    assert "4 failed, 5 passed" in out


def test_compare_write_and_params(tmp_path: Path) -> None:
    write_nb(
        tmp_path / "same.ipynb",
        stored(
            "print('run-id-', id(0), object())",
            stream("run-id- 77 <object object at 0x55d0c0ffee00>\n"),
        ),
    )
    write_nb(tmp_path / "differs.ipynb", stored("print('goodbye')", stream("hello\n")))
    write_nb(
        tmp_path / "params.ipynb",
        ("n = 5\nlabel = 'default'", ["parameters"]),
        stored(("print(label, n * 2)", ["ignore-output"]), stream("stored\n")),
    )
    done = run_pytest(
        tmp_path,
        "--nb",
        "--nb-compare",
        "--nb-sanitize",
        r"run-id- \d+",
        "--nb-write",
        "out",
        "--nb-param",
        "n=21",
        "--nb-param",
        "label=given",
        "-v",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "same.ipynb::same.ipynb PASSED" in out and "params.ipynb::params.ipynb PASSED" in out
    assert "differs.ipynb failed: cells[0]: outputs differ from the stored ones" in out
    assert "--- stored\n+++ fresh\n@@ -1,2 +1,2 @@\n [stdout]\n-hello\n+goodbye" in out
    written = read_nb(tmp_path / "out" / "params.ipynb")
    nbformat.validate(written)
    assert written.cells[1].source == "# Parameters\nn = 21\nlabel = 'given'\n"
    assert written.cells[2].outputs[0]["text"] == "given 42\n"
    assert read_nb(tmp_path / "out" / "differs.ipynb").cells[0].outputs[0]["text"] == "goodbye\n"


def test_without_nb_nothing_heavy_loads_and_bad_options_or_interpreters_are_clear(
    tmp_path: Path,
) -> None:
    write_nb(tmp_path / "broken.ipynb", "1 / 0")
    (tmp_path / "test_light.py").write_text(
        "import sys\n"
        "def test_light():\n"
        "    assert 'bridge.notebooks.pytest_plugin' in sys.modules  # loaded by its entry point\n"
        "    heavy = [m for m in sys.modules if m == 'bridge.api.bridge' or m.split('.')[0] in\n"
        "             ('nbformat', 'jupyter_client', 'zmq')]\n"
        "    assert heavy == []\n"
    )
    # nbmake and nbval, also installed, import nbformat when they load: leave them out here.
    others = ("-p", "no:nbmake", "-p", "no:nbval")
    done = run_pytest(tmp_path, *others)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    # --nb with its options read, but no notebook among the paths: still nothing heavy.
    done = run_pytest(tmp_path, *others, "--nb", "--nb-param", "n=1", "test_light.py")
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_pytest(tmp_path, "--nb", "--nb-python", "/no/such/python", "-rA")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED broken.ipynb::broken.ipynb - KernelStartError: no Python interpreter" in (
        done.stdout
    )
    done = run_pytest(tmp_path, "--nb", "--nb-workers", "0")
    assert done.returncode == 4  # a usage error, before any kernel starts
    assert "--nb-workers must be at least 1" in done.stderr


def test_a_pytest_timeout_stops_the_notebook_and_the_run_goes_on(tmp_path: Path) -> None:
    write_nb(tmp_path / "a_hang.ipynb", "import time\ntime.sleep(60)")
    write_nb(tmp_path / "b_fine.ipynb", "print('fine')")
    done = run_pytest(tmp_path, "--nb", "--timeout", "3", "-rA")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout
    assert "FAILED a_hang.ipynb::a_hang.ipynb" in done.stdout
    assert "PASSED b_fine.ipynb::b_fine.ipynb" in done.stdout


MYPKG = (
    "def by_notebook_a(x):\n"
    "    doubled = x * 2\n"
    "    return doubled\n"
    "\n\n"
    "def by_notebook_b(x):\n"
    "    return x + 1\n"
    "\n\n"
    "def by_nothing(x):\n"
    "    return x - 1\n"
    "\n\n"
    "def by_fixture(x):\n"
    "    return x * 3\n"
)


def covered_lines(report: Path) -> tuple[list[int], list[int]]:
    """(executed, missing) lines of mypkg/__init__.py in a coverage JSON report."""
    import json

    files = json.loads(report.read_text())["files"]
    found = files["mypkg/__init__.py"]
    return found["executed_lines"], found["missing_lines"]


def test_coverage_of_what_only_the_notebooks_run_with_xdist_and_with_workers(
    tmp_path: Path,
) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(MYPKG)
    write_nb(tmp_path / "a.ipynb", "import mypkg\nprint(mypkg.by_notebook_a(2))")
    write_nb(tmp_path / "b.ipynb", "import mypkg\nmypkg.by_notebook_b(2)")
    write_nb(tmp_path / "c.ipynb", "import mypkg")
    (tmp_path / "test_fixture.py").write_text(
        "def test_fixture(notebook):\n"
        "    nb = notebook('c.ipynb', execute=True)\n"
        "    assert nb.ref('mypkg.by_fixture')(2) == 6\n"
    )
    others = ("-p", "no:nbval", "-p", "no:nbmake")
    cov = ("--cov=mypkg", "--cov-report=json:cov.json", "--nb")
    env_path = {"PYTHONPATH": str(tmp_path)}  # the kernels import mypkg from here
    # pytest-xdist: two workers, each with a pool of its own; the kernels are forked.
    done = run_pytest(tmp_path, *others, *cov, "-n", "2", env=env_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 workers [4 items]" in done.stdout
    executed, missing = covered_lines(tmp_path / "cov.json")
    # Only the kernels ran mypkg's functions (the notebooks' and the fixture's): their lines
    # are counted, by_nothing's are not.
    assert missing == [11] and executed == [1, 2, 3, 6, 7, 10, 14, 15]
    assert not list(tmp_path.glob(".coverage.*"))  # the kernels' data files were combined
    # Without xdist: two notebooks at once on the plugin's own pool.
    done = run_pytest(tmp_path, *others, *cov, "--nb-workers", "2", env=env_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert covered_lines(tmp_path / "cov.json") == (executed, missing)


def test_nbmake_options_when_nbmake_is_not_loaded(tmp_path: Path) -> None:
    write_nb(tmp_path / "a_imports.ipynb", "1 / 0", "import no_such_module_kb", "print('after')")
    write_nb(tmp_path / "b_slow.ipynb", "import time\ntime.sleep(30)", "1 / 0", "print('last')")
    done = run_pytest(
        tmp_path,
        "-p",
        "no:nbmake",
        "--nbmake",
        "--nbmake-find-import-errors",
        "--nbmake-timeout",
        "1",
        "--overwrite",
        "-rA",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    # Every cell runs; only the import error fails: the slow cell is interrupted, 1 / 0 passes.
    assert "FAILED a_imports.ipynb::a_imports.ipynb - cells[1] raised ModuleNotFoundError" in (
        done.stdout
    )
    assert "PASSED b_slow.ipynb::b_slow.ipynb" in done.stdout
    # --overwrite: the executed notebook replaces its source, outputs and all.
    written = read_nb(tmp_path / "b_slow.ipynb")
    assert written.cells[2].outputs[0]["text"] == "last\n"
    assert written.cells[1].outputs[0]["ename"] == "ZeroDivisionError"
    done = run_pytest(tmp_path, "-p", "no:nbmake", "--nbmake", "--nbmake-kernel", "julia-1.9")
    assert done.returncode == 1
    assert "asks for the kernel spec 'julia-1.9', which is not installed" in done.stdout


def test_cells_are_items_with_their_own_verdicts_and_lax_compares_marked_cells_only(
    tmp_path: Path,
) -> None:
    write_nb(
        tmp_path / "stop.ipynb",
        nbformat.v4.new_markdown_cell("not an item"),
        stored("print(1)", stream("1\n")),
        "1 / 0",
        "print(3)",
    )
    write_nb(
        tmp_path / "lax.ipynb",
        stored("print('new')", stream("old\n")),  # not marked: not compared under --nb-lax
        stored("# NBVAL_CHECK_OUTPUT\nprint('new')", stream("old\n"), count=2),
        stored(("print('x')", ["nbval-skip"]), stream("x\n"), count=3),
    )
    args = ("--nb", "--nb-compare", "--nb-lax", "--nb-cells", "--junit-xml", "report.xml")
    done = run_pytest(tmp_path, *args)
    assert done.returncode == 1, done.stdout + done.stderr
    outcomes = {}
    for case in ET.parse(tmp_path / "report.xml").getroot().iter("testcase"):
        kind = next((t for t in ("failure", "skipped") if case.find(t) is not None), "passed")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = kind
    assert outcomes == {
        "stop.ipynb::Cell 0": "passed",
        "stop.ipynb::Cell 1": "failure",  # raised: the cells after it do not run
        "stop.ipynb::Cell 2": "skipped",
        "lax.ipynb::Cell 0": "passed",
        "lax.ipynb::Cell 1": "failure",
        "lax.ipynb::Cell 2": "skipped",
    }
    assert "stop.ipynb::Cell 1 - cells[2] raised ZeroDivisionError" in done.stdout
    # A cell picked by its node id, as nbval's are: its notebook runs, only it reports. With
    # nbval's own options (nbval left out): --nbval is --nb --nb-compare --nb-cells.
    nbval = ("-p", "no:nbval", "--nbval", "--nbval-cell-timeout", "30")
    nbval += ("--nbval-kernel-name", "python3", "--nbval-current-env")
    done = run_pytest(tmp_path, *nbval, "lax.ipynb::Cell 1", "-rA")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed in" in done.stdout
    assert "-old\n+new" in done.stdout
