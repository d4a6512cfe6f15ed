"""Running a notebook's cells in one session, as a notebook front end runs them.

Cells go through ``AsyncSession.run_cell``, so their outputs are what Jupyter would store; the
runner keeps the execution count, stores each cell's outputs in the notebook and says why a
cell failed (it raised, did not raise when tagged so, ran past its timeout, killed its kernel).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import ExecutionResult, ExecutionTimeout, KernelDied
from bridge.notebooks.reading import as_outputs, cell_tags
from bridge.notebooks.report import CellFailure

if TYPE_CHECKING:
    from bridge import AsyncSession

SKIP_TAGS = frozenset({"skip-execution", "nbval-skip"})
RAISES_TAGS = frozenset({"raises-exception", "nbval-raises-exception"})


class CellRunner:
    """Runs the cells of one notebook in one session, keeping the execution count.

    *timeout* and *allow_errors* are the notebook's (``reading.execution_settings``).
    """

    def __init__(
        self, session: AsyncSession, nb: Any, *, timeout: float, allow_errors: bool = False
    ) -> None:
        self.session = session
        self.nb = nb
        self.timeout = timeout
        self.allow_errors = allow_errors
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
            if cell.cell_type != "code" or SKIP_TAGS & cell_tags(cell) or not cell.source.strip():
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
        raises = bool(RAISES_TAGS & cell_tags(cell))
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
        for output in outputs:
            if output.get("output_type") == "execute_result":
                output["execution_count"] = count
        cell.outputs = as_outputs(outputs)
