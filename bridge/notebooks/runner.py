"""Notebooks run as tests: read one, check its kernel, run its cells on a fresh kernel, report.

The pytest plugin, the ``kernel-bridge test`` command and the ``notebook`` fixture all come
here. Each notebook gets a kernel of its own from the bridge's warm pool (``AsyncBridge.session``;
the pool starts a replacement in the background) with the notebook's folder as working
directory, and the kernel is shut down when the notebook is done. Cells run as a notebook front
end runs them (``AsyncSession.run_cell``), so the outputs are what Jupyter would store.

nbformat is imported when a notebook is read, not with this module: the pytest plugin reads
its options with it in every pytest run of a project that has ``--nb`` in its addopts.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import (
    ExecutionResult,
    BridgeError,
    ExecutionTimeout,
    InvalidNotebook,
    InvalidRequest,
    KernelDied,
    NotebookFailed,
)
from bridge.notebooks.compare import DEFAULT_SANITIZERS, IGNORE_OUTPUT_TAGS, Sanitizer, diff_outputs
from bridge.notebooks.options import DEFAULT_CELL_TIMEOUT, NotebookOptions

if TYPE_CHECKING:
    from bridge import AsyncBridge, AsyncSession

SKIP_TAGS = frozenset({"skip-execution", "nbval-skip"})
RAISES_TAGS = frozenset({"raises-exception", "nbval-raises-exception"})
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"  # papermill's name for the cell it adds

_PYTHON_KERNEL = re.compile(r"python|ipykernel|^py\d*$|[-_]py\d*$|^kernel-bridge$", re.IGNORECASE)
_CELL_LINE = re.compile(r"Cell In\[(\d+)\], line (\d+)")
_REPORT_OUTPUT_LINES = 40
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colours, out of reports


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


# -- reading --------------------------------------------------------------------------------------


def display_name(path: Path, root: Path | None = None) -> str:
    """*path* relative to *root* (default: the working directory) when it is inside it."""
    root = (root or Path.cwd()).resolve()
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_notebook(path: str | os.PathLike[str], name: str | None = None) -> Any:
    """The notebook at *path* as nbformat 4 (nbformat 3 is upgraded); InvalidNotebook if it
    is not one."""
    name = name or os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidNotebook(f"no such file: {name}") from None
    except UnicodeDecodeError as exc:
        raise InvalidNotebook(f"{name} is not UTF-8 text: {exc}") from None
    except IsADirectoryError:
        raise InvalidNotebook(f"{name} is a directory, not a notebook") from None
    except OSError as exc:  # no such file, no permission
        raise InvalidNotebook(f"cannot read {name}: {exc.strerror}") from None
    try:
        import nbformat

        return nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:
        # Translated here, the one place a notebook is parsed: nbformat raises NotJSONError,
        # jsonschema's ValidationError, KeyError... for JSON that is not a notebook.
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidNotebook(f"{name} is not a notebook nbformat can read: {detail}") from None


def check_kernel(nb: Any, name: str) -> None:
    """Raise InvalidNotebook unless the notebook's kernel is one the bridge provides: Python.

    Any Python kernel name (``python3``, ``conda-env-x-py``...) maps to the bridge's kernel; a
    notebook without a kernel spec runs as Python, as nbclient does.
    """
    spec = nb.metadata.get("kernelspec") or {}
    kernel = str(spec.get("name") or "")
    language = str(
        spec.get("language") or (nb.metadata.get("language_info") or {}).get("name") or ""
    )
    label = f"kernel spec {kernel!r}" if kernel else "kernel"
    if language:
        if language.lower() != "python":
            raise InvalidNotebook(
                f"{name} asks for the {label} (language {language}); "
                "kernel-bridge runs Python kernels only"
            )
        return
    if not kernel or _PYTHON_KERNEL.search(kernel):
        return
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        installed = KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise InvalidNotebook(
            f"{name} asks for the kernel spec {kernel!r}, which is not installed and does not "
            "name a Python kernel; kernel-bridge runs Python notebooks "
            "(set metadata.kernelspec.name to 'python3')"
        ) from None
    if str(installed.language).lower() != "python":
        raise InvalidNotebook(
            f"{name} asks for the kernel spec {kernel!r} (language {installed.language}); "
            "kernel-bridge runs Python kernels only"
        )


# -- parameters -----------------------------------------------------------------------------------


def parse_param(text: str) -> tuple[str, Any]:
    """``"n=3"`` -> ``("n", 3)``: a Python literal when the value is one, else the string."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise InvalidRequest(f"a parameter is NAME=VALUE with a Python name, got {text!r}")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    return name, value


def inject_parameters(nb: Any, params: Mapping[str, Any]) -> int | None:
    """Add a cell that sets *params* after the cell tagged ``parameters``, as papermill does.

    Returns the new cell's index, or None when there are no params or no parameters cell.
    """
    if not params:
        return None
    tagged = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and PARAMETERS_TAG in _tags(c)
    ]
    if not tagged:
        return None
    index = tagged[0]
    lines = ["# Parameters"]
    for key, value in params.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InvalidRequest(f"parameter names must be Python names, got {key!r}")
        lines.append(f"{key} = {value!r}")
    source = "\n".join(lines) + "\n"
    import nbformat.v4

    new = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})  # type: ignore[no-untyped-call]
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        del new["id"]  # cell ids came with nbformat 4.5
    nb.cells.insert(index + 1, new)
    return index + 1


# -- results --------------------------------------------------------------------------------------


def _tags(cell: Any) -> set[str]:
    tags = cell.get("metadata", {}).get("tags") or []
    return {str(t) for t in tags} if isinstance(tags, list) else set()


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
    lines = _strip_ansi("".join(chunks)).rstrip("\n").splitlines()
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


# -- running --------------------------------------------------------------------------------------


def execution_settings(nb: Any, timeout: float, name: str = "the notebook") -> tuple[float, bool]:
    """(cell timeout, allow errors): nbmake's ``metadata.execution`` overrides the defaults."""
    execution = nb.metadata.get("execution") or {}
    if not isinstance(execution, dict):
        raise InvalidNotebook(f"{name}: metadata.execution must be a mapping")
    seconds = execution.get("timeout")
    if seconds is None:
        seconds = timeout
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise InvalidNotebook(
            f"{name}: metadata.execution.timeout must be a positive number, got {seconds!r}"
        )
    return float(seconds), bool(execution.get("allow_errors", False))


class CellRunner:
    """Runs the cells of one notebook in one session, keeping the execution count."""

    def __init__(self, session: AsyncSession, nb: Any, *, timeout: float) -> None:
        self.session = session
        self.nb = nb
        self.timeout, self.allow_errors = execution_settings(nb, timeout)
        self.count = 0
        self.ran = 0
        self.executed: set[int] = set()

    async def enter_folder(self, folder: Path) -> None:
        """Make *folder* the kernel's working directory, as Jupyter does for a notebook."""
        code = "__import__('os').chdir(__kb_cwd__)\ndel __kb_cwd__"
        result = await self.session.execute(code, inputs={"__kb_cwd__": str(folder)})
        result.raise_for_error()

    async def run(self, indices: Iterable[int]) -> CellFailure | None:
        """Run the code cells at *indices* in order; stop at the first failure and return it."""
        for index in indices:
            cell = self.nb.cells[index]
            if cell.cell_type != "code" or SKIP_TAGS & _tags(cell) or not cell.source.strip():
                continue
            failure = await self._run_cell(index, cell)
            if failure is not None:
                return failure
        return None

    async def _run_cell(self, index: int, cell: Any) -> CellFailure | None:
        self.count += 1
        count = self.count
        cell.execution_count = count
        self.ran += 1
        self.executed.add(index)

        def failure(kind: str, headline: str, result: ExecutionResult | None) -> CellFailure:
            error = result.error if result is not None else None
            return CellFailure(
                index=index,
                kind=kind,
                headline=headline,
                source=cell.source,
                outputs=result.outputs if result is not None else [],
                execution_count=count,
                traceback=error.traceback if error is not None else "",
            )

        try:
            result = await self.session.run_cell(cell.source, timeout=self.timeout)
        except ExecutionTimeout as exc:
            self._store(cell, exc.result.outputs, count)
            how = (
                "ignored the interrupt, so its kernel was killed"
                if exc.restarted
                else "was interrupted"
            )
            headline = f"cells[{index}] ran past the cell timeout of {exc.timeout:g} s and {how}"
            return failure("timeout", headline, exc.result)
        except KernelDied as exc:
            outputs = exc.result.outputs if exc.result is not None else []
            self._store(cell, outputs, count)
            headline = f"the kernel died while running cells[{index}] ({exc.status})"
            found = failure("kernel-died", headline, exc.result)
            found.traceback = ""  # there is none: the process is gone
            return found
        self._store(cell, result.outputs, count)
        raises = bool(RAISES_TAGS & _tags(cell))
        if not result.success and not (raises or self.allow_errors):
            err = result.error
            what = f"{err.ename}: {err.evalue}" if err is not None else "an error"
            return failure("error", f"cells[{index}] raised {what}", result)
        if result.success and raises:
            headline = f"cells[{index}] is tagged raises-exception but raised nothing"
            return failure("no-exception", headline, result)
        return None

    @staticmethod
    def _store(cell: Any, outputs: list[dict[str, Any]], count: int) -> None:
        import nbformat

        for output in outputs:
            if output.get("output_type") == "execute_result":
                output["execution_count"] = count
        cell.outputs = nbformat.from_dict(copy.deepcopy(outputs))  # type: ignore[no-untyped-call]


def compare_outputs(
    stored: Any, executed: Any, indices: Iterable[int], sanitizers: Sequence[Sanitizer]
) -> list[CellFailure]:
    """A mismatch for each executed cell whose outputs differ from the stored notebook's.

    Cells never run when the notebook was saved (no execution count, no outputs) and cells
    tagged ``ignore-output`` / ``nbval-ignore-output`` are not compared.
    """
    mismatches = []
    for index in sorted(indices):
        old, new = stored.cells[index], executed.cells[index]
        if IGNORE_OUTPUT_TAGS & _tags(old) or INJECTED_TAG in _tags(old):
            continue
        if old.get("execution_count") is None and not old.get("outputs"):
            continue
        diff = diff_outputs(old.get("outputs", []), new.get("outputs", []), sanitizers)
        if diff:
            mismatches.append(
                CellFailure(
                    index=index,
                    kind="mismatch",
                    headline=f"cells[{index}]: outputs differ from the stored ones",
                    source=new.source,
                    outputs=new.outputs,
                    execution_count=new.execution_count,
                    diff=diff,
                )
            )
    return mismatches


def write_notebook(nb: Any, path: Path) -> Path:
    """Write *nb* to *path*, checked against the nbformat schema first."""
    import nbformat

    nbformat.validate(nb)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, os.fspath(path))  # type: ignore[no-untyped-call]
    return path


def _written_path(path: Path, write_dir: Path, root: Path | None) -> Path:
    root = (root or Path.cwd()).resolve()
    resolved = path.resolve()
    try:
        relative = resolved.relative_to(root)
    except ValueError:
        relative = Path(*resolved.parts[1:])  # outside the root: keep the whole path under DIR
    return write_dir / relative


async def run_notebook(
    bridge: AsyncBridge, path: str | os.PathLike[str], *, options: NotebookOptions | None = None
) -> NotebookResult:
    """Run the notebook at *path* as a test on a fresh kernel from *bridge*'s pool.

    >>> result = await run_notebook(b, "notebooks/tour.ipynb")     # doctest: +SKIP
    >>> result.status, result.duration                              # doctest: +SKIP
    ('passed', 0.41)

    Never raises for a failing notebook: the result says what failed (``result.report()``).
    """
    options = options or NotebookOptions()
    path = Path(path)
    started = time.perf_counter()
    result = NotebookResult(path=path, name=display_name(path, options.root))
    try:
        stored = read_notebook(path, result.name)
        check_kernel(stored, result.name)
        execution_settings(stored, options.timeout, result.name)
        nb = copy.deepcopy(stored)
        injected = inject_parameters(nb, options.params)
        if injected is not None:
            stored.cells.insert(injected, copy.deepcopy(nb.cells[injected]))
    except InvalidRequest as exc:
        result.status, result.error = "error", str(exc)
        result.duration = time.perf_counter() - started
        return result
    result.notebook = nb
    result.code_cells = sum(1 for c in nb.cells if c.cell_type == "code")
    try:
        async with bridge.session() as session:
            runner = CellRunner(session, nb, timeout=options.timeout)
            await runner.enter_folder(path.resolve().parent)
            failure = await runner.run(range(len(nb.cells)))
            language = session.kernel.kernel_info.get("language_info")
            if language:
                nb.metadata["language_info"] = language
    except BridgeError as exc:  # no kernel to be had, or it died before the first cell
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        result.duration = time.perf_counter() - started
        return result
    result.cells_run = runner.ran
    if failure is not None:
        result.status, result.failures = "failed", [failure]
    elif options.compare:
        sanitizers = [*DEFAULT_SANITIZERS, *options.sanitizers]
        result.failures = compare_outputs(stored, nb, runner.executed, sanitizers)
        if result.failures:
            result.status = "failed"
    if options.write_dir is not None:
        target = _written_path(path, options.write_dir, options.root)
        try:
            result.written = await asyncio.to_thread(write_notebook, nb, target)
        except Exception as exc:
            result.status = "error"
            result.error = f"cannot write the executed notebook to {target}: {exc}"
    result.duration = time.perf_counter() - started
    return result
