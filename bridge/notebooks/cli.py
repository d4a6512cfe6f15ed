"""``kernel-bridge test PATH...``: notebooks as tests from the command line.

A progress bar while they run (one line per notebook when stderr is not a terminal), the report
of each failure, a summary table, exit status 1 if any notebook failed, and a JUnit XML report
for CI systems on request.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from bridge import InvalidRequest
from bridge.notebooks.options import build_options
from bridge.notebooks.report import NotebookResult
from bridge.notebooks.runner import run_many

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def find_notebooks(paths: Sequence[str]) -> list[Path]:
    """The notebooks named by *paths*: files as given, folders searched (hidden folders such
    as .ipynb_checkpoints left out)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*.ipynb")
                if not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found.append(path)
        else:
            raise InvalidRequest(f"no such file or folder: {raw}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise InvalidRequest(f"no notebooks found in {' '.join(paths)}")
    return unique


class Progress:
    """A one-line bar on a terminal; one line per finished notebook otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream
        self.tty = stream.isatty()

    def update(self, result: NotebookResult) -> None:
        self.done += 1
        self.failed += not result.passed
        status = _status(result)
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            bar = "#" * filled + "-" * (width - filled)
            failed = f" {self.failed} failed" if self.failed else ""
            line = f"[{bar}] {self.done}/{self.total}{failed}  {result.name}"
            self.stream.write("\r\x1b[K" + line[:200])
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(
                f"[{self.done}/{self.total}] {status:<6} {result.name} ({result.duration:.2f} s)\n"
            )
        self.stream.flush()


def _status(result: NotebookResult) -> str:
    return {"passed": "passed", "failed": "FAILED"}.get(result.status, "ERROR")


def summary_table(results: Sequence[NotebookResult]) -> str:
    rows = [("NOTEBOOK", "STATUS", "TIME", "FAILING CELL")]
    for r in results:
        cell = "" if r.failed_cell is None else f"cells[{r.failed_cell}]"
        rows.append((r.name, _status(r), f"{r.duration:.2f} s", cell))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def _counts(results: Sequence[NotebookResult]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "error": 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def write_junit(results: Sequence[NotebookResult], path: Path, elapsed: float) -> None:
    """A JUnit XML report: one testcase per notebook, its report as the failure text."""
    counts = _counts(results)
    suite = ET.Element(
        "testsuite",
        name="kernel-bridge",
        tests=str(len(results)),
        failures=str(counts["failed"]),
        errors=str(counts["error"]),
        skipped="0",
        time=f"{elapsed:.3f}",
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=Path(r.name).parent.as_posix().replace("/", ".").strip(".") or "notebooks",
            name=r.name,
            file=r.name,
            time=f"{r.duration:.3f}",
        )
        if not r.passed:
            tag = "failure" if r.status == "failed" else "error"
            node = ET.SubElement(case, tag, message=_XML_INVALID.sub("", r.headline))
            node.text = _XML_INVALID.sub("", r.report())
    root = ET.Element("testsuites")
    root.append(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def run_tests(args: argparse.Namespace) -> int:
    """The ``test`` command (see ``kernel-bridge test --help``)."""
    options = build_options(  # bad values: InvalidRequest, which main() makes exit status 2
        flag="--",
        timeout=args.timeout,
        params=args.param,
        compare=args.compare,
        sanitize=args.sanitize,
        sanitize_with=args.sanitize_with,
        write=args.write,
        workers=args.workers,
        python=args.python,
    )
    paths = find_notebooks(args.paths)
    progress = Progress(len(paths), sys.stderr)
    started = time.perf_counter()
    results = asyncio.run(run_many(paths, options, on_result=progress.update))
    elapsed = time.perf_counter() - started
    for r in results:
        if not r.passed:
            print(f"\n{'=' * 30} {r.name} {'=' * 30}\n{r.report()}")
    print()
    print(summary_table(results))
    counts = _counts(results)
    parts = [f"{counts['passed']} passed", f"{counts['failed']} failed"]
    if counts["error"]:
        parts.append(f"{counts['error']} error{'s' * (counts['error'] > 1)}")
    noun = "notebook" if len(results) == 1 else "notebooks"
    print(f"{len(results)} {noun}: {', '.join(parts)} in {elapsed:.2f} s")
    if args.junit_xml:
        write_junit(results, Path(args.junit_xml), elapsed)
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAILED
