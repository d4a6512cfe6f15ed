"""Running a notebook's cells in one session, as a notebook front end runs them.

Cells go through ``AsyncSession.run_cell``, so their outputs are what Jupyter would store; the
runner keeps the execution count, stores each cell's outputs in the notebook and says why a
cell failed (it raised, did not raise when tagged so, ran past its timeout, killed its kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import ExecutionResult, ExecutionTimeout, KernelDied, strip_ansi
from bridge.notebooks.reading import as_outputs, cell_marks
from bridge.notebooks.report import CellFailure

if TYPE_CHECKING:
    from bridge import AsyncSession


class CellRunner:
    """Runs the cells of one notebook in one session, keeping the execution count.

    *timeout* and *allow_errors* are the notebook's (``reading.execution_settings``);
    *import_errors_only* is nbmake's ``--nbmake-find-import-errors``: every cell runs (a cell
    past its timeout is interrupted and the next one runs) and only a ModuleNotFoundError fails.
    """

    def __init__(
        self,
        session: AsyncSession,
        nb: Any,
        *,
        timeout: float,
        allow_errors: bool = False,
        import_errors_only: bool = False,
    ) -> None:
        self.session = session
        self.nb = nb
        self.timeout = timeout
        self.allow_errors = allow_errors or import_errors_only
        self.import_errors_only = import_errors_only
        self.count = 0
        self.ran = 0
        self.executed: set[int] = set()

    async def start_coverage(self, settings: dict[str, Any]) -> None:
        """Measure what the notebook runs with coverage.py, started in this kernel (a forked
        kernel too: the fork server never imports coverage) with *settings*
        (``NotebookOptions.coverage``); ``stop_coverage`` writes a data file of its own
        (``data_suffix``) beside the host's, for pytest-cov to combine."""
        code = (
            "import os as __kb_os, coverage as __kb_coverage\n"
            "__kb_os.chdir(__kb_cov_settings__.pop('cwd'))\n"
            "__kb_cov__ = __kb_coverage.Coverage(data_suffix=True, **__kb_cov_settings__)\n"
            "__kb_cov__._warn_no_data = __kb_cov__._warn_unimported_source = False\n"
            "__kb_cov__.start()\n"
            "del __kb_os, __kb_coverage, __kb_cov_settings__"
        )
        result = await self.session.execute(code, inputs={"__kb_cov_settings__": settings})
        result.raise_for_error()

    async def stop_coverage(self) -> None:
        """Stop measuring and write this kernel's coverage data (see ``start_coverage``)."""
        code = "__kb_cov__.stop()\n__kb_cov__.save()\ndel __kb_cov__"
        (await self.session.execute(code)).raise_for_error()

    async def enter_folder(self, folder: Path) -> None:
        """Make *folder* the kernel's working directory, as Jupyter does for a notebook."""
        code = "__import__('os').chdir(__kb_cwd__)\ndel __kb_cwd__"
        result = await self.session.execute(code, inputs={"__kb_cwd__": str(folder)})
        result.raise_for_error()

    async def run(self, indices: Iterable[int]) -> CellFailure | None:
        """Run the code cells at *indices* in order; stop at the first failure and return it."""
        for index in indices:
            cell = self.nb.cells[index]
            if cell.cell_type != "code" or cell_marks(cell).skip or not cell.source.strip():
                continue
            failure = await self._run_cell(index, cell)
            if failure is not None:
                return failure
        return None

    async def aclose(self, *, wait: bool = True) -> None:
        """Shut the session's kernel down (``wait=False``: in the background)."""
        await self.session.aclose(wait=wait)

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
            if self.import_errors_only and not exc.restarted:
                return None  # nbmake's find-import-errors: interrupted, on to the next cell
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
        raises = cell_marks(cell).raises
        # An error output fails the cell even when the reply says ok (an IPython post_execute
        # callback raised: matplotlib drawing a figure), as nbval and nbmake have it.
        shown = next((o for o in result.outputs if o.get("output_type") == "error"), None)
        err = result.error
        ename = err.ename if err is not None else str((shown or {}).get("ename", ""))
        evalue = err.evalue if err is not None else str((shown or {}).get("evalue", ""))
        raised = err is not None or shown is not None
        first = next((line for line in evalue.splitlines() if line.strip()), "")
        what = f"{ename}: {first.strip()}"
        if self.import_errors_only and ename == "ModuleNotFoundError":
            return failure("error", f"cells[{index}] raised {what}", result)
        if raised and not (raises or self.allow_errors):
            found = failure("error", f"cells[{index}] raised {what}", result)
            if err is None and shown is not None:
                found.traceback = strip_ansi("\n".join(shown.get("traceback") or []))
            return found
        if not raised and raises:
            headline = f"cells[{index}] is tagged raises-exception but raised nothing"
            return failure("no-exception", headline, result)
        if not raised:
            return await self._nbmake_after(index, cell, failure)
        return None

    async def _nbmake_after(
        self, index: int, cell: Any, failure: Callable[[str, str, ExecutionResult], CellFailure]
    ) -> CellFailure | None:
        """nbmake's cell metadata, after a cell that did not raise: ``nbmake.mock`` sets names
        to values (JSON, as given), then ``nbmake.post_cell_execute`` runs its lines."""
        settings = cell.metadata.get("nbmake") or {}
        if not isinstance(settings, dict):
            return None
        mock = settings.get("mock") or {}
        if isinstance(mock, dict) and mock:
            lines = [f"{name} = __kb_mock__[{i}]" for i, name in enumerate(mock)]
            code = "\n".join(["try:", *(f"    {line}" for line in lines), "finally:"])
            code += "\n    del __kb_mock__"
            result = await self.session.execute(code, inputs={"__kb_mock__": list(mock.values())})
            if not result.success:
                err = result.error
                what = f"{err.ename}: {err.evalue}" if err is not None else "an error"
                return failure("nbmake", f"cells[{index}]: its nbmake.mock failed: {what}", result)
        post = settings.get("post_cell_execute") or []
        if isinstance(post, list) and post:
            result = await self.session.execute("\n".join(str(line) for line in post))
            if not result.success:
                err = result.error
                what = f"{err.ename}: {err.evalue}" if err is not None else "an error"
                headline = f"cells[{index}]: its nbmake.post_cell_execute raised {what}"
                return failure("nbmake", headline, result)
        return None

    @staticmethod
    def _store(cell: Any, outputs: list[dict[str, Any]], count: int) -> None:
        for output in outputs:
            if output.get("output_type") == "execute_result":
                output["execution_count"] = count
        cell.outputs = as_outputs(outputs)
