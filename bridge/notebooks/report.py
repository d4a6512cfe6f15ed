"""What a notebook run as a test came to: ``NotebookResult`` and its failures, and the report a
person reads (the failing cell's source with the line marked, its outputs, the traceback, the
diff), the same for pytest, the command and ``NotebookFailed``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import NotebookFailed, strip_ansi

_CELL_LINE = re.compile(r"Cell In\[(\d+)\], line (\d+)")
_REPORT_OUTPUT_LINES = 40


@dataclass
class CellFailure:
    """Why a notebook failed at one cell.

    ``kind`` is ``"error"`` (the cell raised), ``"no-exception"`` (tagged raises-exception, it
    did not raise), ``"timeout"``, ``"kernel-died"`` or ``"mismatch"`` (``--nb-compare``).
    """

    index: int
    kind: str
    headline: str
    source: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    traceback: str = ""
    diff: str = ""

    def report(self) -> str:
        label = f"cells[{self.index}]"
        if self.execution_count is not None:
            label += f", In [{self.execution_count}]"
        rule = "-" * 18
        parts = [f"{label}:", rule, _numbered(self.source, self._error_line()), rule]
        shown = _render_outputs(self.outputs)
        if shown and self.kind != "mismatch":
            parts += ["outputs:", shown]
        if self.traceback:
            parts += ["", self.traceback.rstrip()]
        if self.diff:
            parts += ["outputs differ (- stored, + fresh):", self.diff]
        return "\n".join(parts)

    def _error_line(self) -> int | None:
        if self.execution_count is None:
            return None
        lines = [
            int(m.group(2))
            for m in _CELL_LINE.finditer(self.traceback)
            if int(m.group(1)) == self.execution_count
        ]
        return lines[-1] if lines else None


def _numbered(source: str, mark: int | None) -> str:
    lines = source.splitlines() or [""]
    width = len(str(len(lines)))
    return "\n".join(
        f"{'->' if n == mark else '  '} {n:>{width}}  {line}".rstrip()
        for n, line in enumerate(lines, 1)
    )


def _render_outputs(outputs: Iterable[dict[str, Any]]) -> str:
    """The outputs as a person reads them in a terminal; long output keeps its head and tail."""
    chunks: list[str] = []
    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            text = output.get("text", "")
            chunks.append("".join(text) if isinstance(text, list) else str(text))
        elif kind in ("display_data", "execute_result"):
            data = output.get("data") or {}
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            others = sorted(k for k in data if k != "text/plain")
            if kind == "execute_result":
                text = f"Out[{output.get('execution_count') or ' '}]: {text}"
            if others:
                text += f"  [{kind}: {', '.join(others)}]"
            chunks.append(text + "\n")
    lines = strip_ansi("".join(chunks)).rstrip("\n").splitlines()
    if len(lines) > _REPORT_OUTPUT_LINES:
        half = _REPORT_OUTPUT_LINES // 2
        cut = len(lines) - 2 * half
        lines = [*lines[:half], f"... ({cut} lines left out) ...", *lines[-half:]]
    return "\n".join(lines)


@dataclass
class NotebookResult:
    """The outcome of one notebook run as a test.

    ``status`` is ``"passed"``, ``"failed"`` (a cell failed or outputs differ) or ``"error"``
    (the notebook could not be run: unreadable, a kernel the bridge cannot provide, no kernel).
    ``notebook`` is the executed notebook (nbformat 4), outputs and all.
    """

    path: Path
    name: str
    status: str = "passed"
    duration: float = 0.0
    failures: list[CellFailure] = field(default_factory=list)
    error: str = ""
    notebook: Any = None
    cells_run: int = 0
    code_cells: int = 0
    written: Path | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed_cell(self) -> int | None:
        """Index (in ``notebook.cells``) of the first failing cell, if a cell failed."""
        return self.failures[0].index if self.failures else None

    @property
    def headline(self) -> str:
        if self.error:
            return self.error
        if not self.failures:
            return f"{self.name} passed"
        first = self.failures[0].headline
        more = len(self.failures) - 1
        return first + (f" (and {more} more cell{'s' * (more > 1)})" if more else "")

    def report(self) -> str:
        """Everything a person needs to see why the notebook failed ("" if it passed)."""
        if self.passed:
            return ""
        if self.error:
            return self.error if self.error.startswith(self.name) else f"{self.name}: {self.error}"
        head = f"{self.name} failed: {self.headline}"
        ran = f"({self.cells_run} of {self.code_cells} code cells ran)"
        sections = [f"{head}\n{ran}", *(f.report() for f in self.failures)]
        if self.written is not None:
            sections.append(f"the executed notebook is at {self.written}")
        return "\n\n".join(sections)

    def raise_for_failure(self) -> NotebookResult:
        """Raise ``bridge.NotebookFailed`` with the report if the notebook did not pass."""
        if not self.passed:
            raise NotebookFailed(self.report(), result=self)
        return self
