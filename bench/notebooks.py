"""Benchmark: a suite of notebooks run as tests, against nbmake and an nbclient loop, in one run.

    .venv/bin/python bench/notebooks.py [--notebooks 20] [--workers 2] [--rounds 2]

Builds N small notebooks (a few cells each: standard-library imports, prints, a small HTML
display; one has a cell tagged raises-exception, two fail on purpose) in a temporary folder and
times, wall clock and CPU, on the same notebooks:
(a) pytest --nb --nb-workers 2: this project's plugin, a fresh forked kernel per notebook, warm;
(b) pytest --nbmake: nbmake, a cold kernel per notebook started by nbclient, one at a time;
(c) a loop of nbclient's NotebookClient in this process, one cold kernel per notebook;
checks that all three agree on which notebooks pass, and prints (b)/(a) and (c)/(a) of the best
wall time of each; then (d) one notebook through `pytest --nb` from a cold process (target
<= 1.5 s); then nbval's and nbmake's own test notebooks (tests/notebooks/upstream) under the
original tool and under kernel-bridge's aliases of its options, timed, verdicts compared.
Both pytest runs pay the same pytest start-up (without this venv's property testing plugins,
which neither needs, and without the other tools' plugins: nbmake's and nbval's import
nbformat, hence jsonschema, at plugin load, about a second that a project which switched no
longer pays); the nbclient loop pays none.

Bytecode: the figures assume the compiled .pyc files a `pip install` leaves (`make test`'s
venv). A venv made by `uv pip install` has none and PYTHONDONTWRITEBYTECODE=1 keeps Python from
writing them, so every run compiles ~450 modules again (about 0.5 s per process): the script
says so, and `python -m compileall -q .venv/lib` restores what pip would have done.
CPU counts the host and its kernels: all three start one kernel per notebook, so on a machine
that others keep busy the wall-time ratios shrink toward the CPU ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import nbformat.v4 as v4

FAILING = {7, 15}
RAISES = {3}


def build(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        cells = [
            v4.new_markdown_cell(f"# notebook {i}"),
            v4.new_code_cell("import collections, datetime, itertools, json, math, statistics"),
            v4.new_code_cell(
                f"values = [math.sqrt(k) for k in range({i} + 10)]\n"
                f"print('notebook {i}', round(statistics.mean(values), 3))"
            ),
            v4.new_code_cell(
                "from IPython.display import HTML, display\n"
                "display(HTML(f'<b>{len(values)} values</b>'))"
            ),
            v4.new_code_cell(
                "values[1000]"
                if i in FAILING
                else "counts = collections.Counter(int(v) for v in values)\njson.dumps(counts)"
            ),
        ]
        if i in RAISES:
            cells.append(v4.new_code_cell("1 / 0", metadata={"tags": ["raises-exception"]}))
        nb = v4.new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        path = folder / f"nb_{i:02d}.ipynb"
        nbformat.write(nb, str(path))
        paths.append(path)
    return paths


def bytecode_cached() -> bool:
    """Whether pytest's own modules have compiled bytecode (pip install writes it, uv does not)."""
    import importlib.util

    import _pytest.main

    return Path(importlib.util.cache_from_source(_pytest.main.__file__)).exists()


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (kernels included)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


Run = tuple[float, float, set[str]]  # wall seconds, CPU seconds, the notebooks that passed


# The other tools' plugins, each left out of the runs that are not its own: nbmake's and
# nbval's import nbformat, hence jsonschema, when they load (about a second per process).
TOOLS = ("kernel_bridge", "nbmake", "nbval")


def pytest_verdicts(
    folder: Path, name: str, tool: str, *args: str, target: Path | None = None
) -> tuple[float, float, dict[str, str]]:
    """A pytest run of *tool*'s plugin in *folder* (of *target*, default the folder): wall and
    CPU seconds, and each item's verdict (passed, failed, skipped) from its JUnit XML report."""
    report = folder.parent / f"{name}.xml"
    cpu, started = cpu_seconds(), time.perf_counter()
    # The test venv's property-testing plugins (schemathesis, hypothesis) take over a second
    # to import in every pytest run, whatever it runs: left out of every run alike, so the
    # ratio compares the notebook runners rather than this venv's unrelated plugins.
    unrelated = ["-p", "no:schemathesis", "-p", "no:hypothesispytest"]
    unrelated += [arg for other in TOOLS if other != tool for arg in ("-p", f"no:{other}")]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *unrelated]
    subprocess.run(
        [*command, "--junit-xml", str(report), *args, str(target or folder)],
        cwd=folder,
        capture_output=True,
        check=False,
        timeout=600,
    )
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    verdicts = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        verdict = "passed"
        for tag, meaning in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            if case.find(tag) is not None:
                verdict = meaning
        verdicts[f"{case.get('classname')}::{case.get('name')}"] = verdict
    return elapsed, cpu, verdicts


def pytest_run(folder: Path, name: str, *args: str, target: Path | None = None) -> Run:
    """As ``pytest_verdicts``, with the names of the notebooks that passed."""
    tool = "nbmake" if name == "nbmake" else "kernel_bridge"
    elapsed, cpu, verdicts = pytest_verdicts(folder, name, tool, *args, target=target)
    passed = {k.split("::")[-1] for k, v in verdicts.items() if v == "passed"}
    return elapsed, cpu, passed


UPSTREAM = Path(__file__).resolve().parent.parent / "tests" / "notebooks" / "upstream"
NBVAL_ARGS = ("--nbval", "--nbval-current-env", "--nbval-sanitize-with", "sanitize_defaults.cfg")


def upstream_suites(tmp: Path, rounds: int) -> bool:
    """nbval's and nbmake's own test notebooks under the original tool and under kernel-bridge's
    aliases of its options (the other plugins left out), best of *rounds*; True if every item's
    verdict is the same."""
    same = True
    for tool, args in (("nbval", NBVAL_ARGS), ("nbmake", ("--nbmake",))):
        folder = tmp / tool
        shutil.copytree(UPSTREAM / tool, folder)
        times: dict[str, list[float]] = {tool: [], "kernel_bridge": []}
        found: dict[str, dict[str, str]] = {}
        for _ in range(rounds):
            for who in times:
                elapsed, _cpu, verdicts = pytest_verdicts(folder, f"{tool}-{who}", who, *args)
                times[who].append(elapsed)
                found[who] = verdicts
        theirs, ours = min(times[tool]), min(times["kernel_bridge"])
        agree = found[tool] == found["kernel_bridge"]
        same = same and agree
        print(
            f"  {tool}'s own notebooks ({len(found[tool])} items): {tool} {theirs:.2f} s, "
            f"pytest {' '.join(args[:1])} on kernel-bridge {ours:.2f} s: "
            f"{theirs / ours:.2f}x; same verdicts: {'yes' if agree else 'NO'}"
        )
    return same


def nbclient_loop(paths: list[Path]) -> Run:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    passed = set()
    cpu, started = cpu_seconds(), time.perf_counter()
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        client = NotebookClient(
            nb,
            timeout=60,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute(stderr=subprocess.DEVNULL)  # the kernels' start-up chatter
        except CellExecutionError:
            continue
        passed.add(path.name)
    return time.perf_counter() - started, cpu_seconds() - cpu, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebooks", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="best of N rounds (default 2)")
    args = parser.parse_args()
    names = [
        f"(a) pytest --nb --nb-workers {args.workers} (kernel-bridge)",
        "(b) pytest --nbmake (nbmake)",
        "(c) nbclient NotebookClient loop",
    ]
    runs: dict[str, list[Run]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        folder = Path(tmp) / "notebooks"
        folder.mkdir()
        paths = build(folder, args.notebooks)
        expected = {p.name for i, p in enumerate(paths) if i not in FAILING}
        for _ in range(args.rounds):  # interleaved, so a busy moment does not hit one alone
            runs[names[0]].append(
                pytest_run(folder, "ours", "--nb", "--nb-workers", str(args.workers))
            )
            runs[names[1]].append(pytest_run(folder, "nbmake", "--nbmake"))
            runs[names[2]].append(nbclient_loop(paths))
        one = [
            pytest_run(folder, "one", "--nb", target=paths[0])[0] for _ in range(args.rounds + 1)
        ]
    best = {name: min(r[0] for r in found) for name, found in runs.items()}
    cpu = {name: min(r[1] for r in found) for name, found in runs.items()}
    print(
        f"{args.notebooks} notebooks, {len(FAILING)} failing on purpose; "
        f"best of {args.rounds} rounds, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs:"
    )
    print(f"  {'':48} {'wall':>8} {'CPU':>8}")
    for name in names:
        print(f"  {name:48} {best[name]:6.2f} s {cpu[name]:6.2f} s")
    a, b, c = (best[n] for n in names)
    print(f"b/a = {b / a:5.2f}   (target >= 8)")
    print(f"c/a = {c / a:5.2f}   (target >= 3)")
    failed = {
        name: (sorted(expected - r[2]), sorted(r[2] - expected))
        for name, found in runs.items()
        for r in found
        if r[2] != expected
    }
    print(f"(d) pytest --nb on one notebook from a cold process: {min(one):.2f} s (target <= 1.5)")
    if not bytecode_cached():
        print("    (no .pyc files in this venv: every process compiles its imports; see above)")
    print("The tools' own test notebooks (tests/notebooks/upstream), best of 2:")
    with tempfile.TemporaryDirectory(prefix="kb-bench-upstream-") as tmp:
        upstream_same = upstream_suites(Path(tmp), 2)
    print(f"all three agree on which notebooks pass: {'NO' if failed else 'yes'}")
    for name, (missing, extra) in failed.items():
        print(f"  {name}: should pass but did not {missing}; should fail but passed {extra}")
    if failed or not upstream_same:
        sys.exit(1)


if __name__ == "__main__":
    main()
