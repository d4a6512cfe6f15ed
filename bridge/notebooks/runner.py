"""Notebooks run as tests: the one set-up path, ``run_notebook``, and the one concurrent runner.

Every notebook, run as a test or opened by the ``notebook`` fixture, is set up the same way
(``open_notebook``): read, its kernel checked, its parameters injected, then a kernel of its
own from the bridge's warm pool (``AsyncBridge.session``; the pool starts a replacement in the
background) with the notebook's folder as working directory. Many notebooks run through one
``Batch``, at most ``options.workers`` at once: ``kernel-bridge test`` runs them all
(``run_many``), the pytest plugin asks for each as pytest reaches its item.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import BridgeError, InvalidRequest
from bridge.notebooks.cells import CellRunner
from bridge.notebooks.compare import DEFAULT_SANITIZERS, compare_outputs
from bridge.notebooks.options import NotebookOptions
from bridge.notebooks.reading import (
    check_kernel,
    display_name,
    execution_settings,
    inject_parameters,
    read_notebook,
    write_notebook,
)
from bridge.notebooks.report import NotebookResult

if TYPE_CHECKING:
    from bridge import AsyncBridge

log = logging.getLogger("bridge.notebooks")

# -- the one set-up path --------------------------------------------------------------------------


@dataclass
class Prepared:
    """A notebook read, its kernel checked and its parameters injected: ready to run."""

    path: Path
    name: str
    nb: Any
    timeout: float
    allow_errors: bool
    import_errors_only: bool = False


async def prepare(
    bridge: AsyncBridge,
    path: Path,
    *,
    name: str,
    timeout: float,
    params: Mapping[str, Any],
    kernel: str | None = None,
    import_errors_only: bool = False,
) -> Prepared:
    """Read the notebook at *path* and check it; InvalidRequest (InvalidNotebook) says why it
    cannot run. *timeout* is the cell timeout unless the notebook's metadata sets one."""
    nb = read_notebook(path, name)
    await check_kernel(bridge, nb, name, kernel=kernel)
    seconds, allow_errors = execution_settings(nb, timeout, name)
    inject_parameters(nb, params)
    return Prepared(path, name, nb, seconds, allow_errors, import_errors_only)


async def open_notebook(
    bridge: AsyncBridge, prepared: Prepared, *, coverage: dict[str, Any] | None = None
) -> CellRunner:
    """A session of its own for *prepared*, in the notebook's folder, ready to run cells,
    with coverage measured from the start when *coverage* (``NotebookOptions.coverage``) says.

    The caller closes it (``await runner.aclose()``); if this fails, the session is closed.
    """
    session = bridge.session()
    await session.start()
    try:
        runner = CellRunner(
            session,
            prepared.nb,
            timeout=prepared.timeout,
            allow_errors=prepared.allow_errors,
            import_errors_only=prepared.import_errors_only,
        )
        if coverage is not None:
            await runner.start_coverage(dict(coverage))
        await runner.enter_folder(prepared.path.resolve().parent)
    except BaseException:
        await session.aclose()
        raise
    return runner


# -- one notebook ---------------------------------------------------------------------------------


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

    def error(message: str) -> NotebookResult:
        result.status, result.error = "error", message
        result.duration = time.perf_counter() - started
        return result

    try:
        prepared = await prepare(
            bridge,
            path,
            name=result.name,
            timeout=options.timeout,
            params=options.params,
            kernel=options.kernel,
            import_errors_only=options.import_errors_only,
        )
    except InvalidRequest as exc:  # not a notebook the bridge can run: its own words
        return error(str(exc))
    except BridgeError as exc:  # the kernel specs could not be asked for
        return error(f"{type(exc).__name__}: {exc}")
    nb = prepared.nb
    stored = copy.deepcopy(nb) if options.compare else None  # before the cells overwrite it
    result.notebook = nb
    result.code_cells = sum(1 for c in nb.cells if c.cell_type == "code")
    try:
        runner = await open_notebook(bridge, prepared, coverage=options.coverage)
        try:
            failure = await runner.run(range(len(nb.cells)))
            language = runner.session.kernel_info.get("language_info")
            if language:
                nb.metadata["language_info"] = language
            if options.coverage is not None:
                # A kernel that died or was restarted took its measurements with it.
                with contextlib.suppress(BridgeError):
                    await runner.stop_coverage()
        finally:
            # The result is ready: the kernel's polite shutdown (a tenth of a second) goes on
            # in the background while the next notebook starts; the bridge's close waits.
            await runner.aclose(wait=False)
    except BridgeError as exc:  # no kernel to be had, or it died before the first cell
        return error(f"{type(exc).__name__}: {exc}")
    result.cells_run = runner.ran
    if stored is not None:
        # The cells that ran before a failing one are compared too: with --nb-cells each
        # has its own verdict, as in nbval.
        compared = runner.executed - ({failure.index} if failure is not None else set())
        defaults = DEFAULT_SANITIZERS if options.default_sanitizers else ()
        sanitizers = [*defaults, *options.sanitizers]
        result.failures = compare_outputs(stored, nb, compared, sanitizers, lax=options.lax)
    if failure is not None:
        result.failures = sorted([*result.failures, failure], key=lambda f: f.index)
    if result.failures:
        result.status = "failed"
    if options.write_dir is not None or options.overwrite:
        target = (
            path
            if options.write_dir is None
            else _written_path(path, options.write_dir, options.root)
        )
        try:
            result.written = await asyncio.to_thread(write_notebook, nb, target)
        except Exception as exc:
            result.status = "error"
            result.error = f"cannot write the executed notebook to {target}: {exc}"
    result.duration = time.perf_counter() - started
    return result


# -- many notebooks -------------------------------------------------------------------------------


def bridge_settings(options: NotebookOptions, notebooks: int) -> dict[str, Any]:
    """The arguments of the bridge (``AsyncBridge`` or ``Bridge``) that runs *notebooks*
    notebooks: one warm kernel per worker, no more kernels than notebooks."""
    return {
        "pool_size": max(1, min(options.workers, notebooks)),
        "python": options.python,
        "timeout": options.timeout,
    }


class Batch:
    """Notebooks run on one bridge, at most ``options.workers`` at once, started in order.

    >>> batch = Batch(b, NotebookOptions(workers=2))               # doctest: +SKIP
    >>> (await batch.result(batch.add(Path("a.ipynb")))).status     # doctest: +SKIP
    'passed'

    ``result(i)`` starts notebook i and the next ``workers - 1`` ones, then waits for i only:
    the pytest plugin asks as pytest reaches each item, so N run at once, each item waits for
    its own notebook, and notebooks pytest never reaches (``-x``) never run. Cancelling
    ``result(i)`` stops notebook i (its kernel is shut down).
    """

    def __init__(self, bridge: AsyncBridge, options: NotebookOptions) -> None:
        self.bridge = bridge
        self.options = options
        self.paths: list[Path] = []
        self._slots = asyncio.Semaphore(options.workers)
        self._tasks: dict[int, asyncio.Task[NotebookResult]] = {}
        self._started: set[int] = set()

    def add(self, path: Path) -> int:
        """Queue *path*; returns its index for ``result``."""
        self.paths.append(path)
        return len(self.paths) - 1

    async def result(self, index: int) -> NotebookResult:
        """The result of notebook *index* (asked once); started with the next ``workers - 1``."""
        for ahead in range(index, min(index + self.options.workers, len(self.paths))):
            if ahead not in self._started:
                self._started.add(ahead)
                self._tasks[ahead] = asyncio.create_task(self._run(self.paths[ahead]))
        return await self._tasks.pop(index)

    async def aclose(self) -> None:
        """Stop the notebooks started and not waited for; wait until they are stopped."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, path: Path) -> NotebookResult:
        async with self._slots:
            try:
                return await run_notebook(self.bridge, path, options=self.options)
            except Exception as exc:  # a bug of ours: report it, let the others run
                name = display_name(path, self.options.root)
                log.error("kernel-bridge failed on %s", name, exc_info=True)
                error = f"kernel-bridge failed on it: {type(exc).__name__}: {exc}"
                return NotebookResult(path=path, name=name, status="error", error=error)


async def run_many(
    paths: Sequence[Path],
    options: NotebookOptions,
    *,
    on_result: Callable[[NotebookResult], object] | None = None,
) -> list[NotebookResult]:
    """Run *paths* on a bridge of their own, ``options.workers`` at a time; the results in the
    order of *paths*, each also given to *on_result* as it comes."""
    from bridge import AsyncBridge

    async with AsyncBridge(**bridge_settings(options, len(paths))) as b:
        batch = Batch(b, options)

        async def one(index: int) -> NotebookResult:
            result = await batch.result(index)
            if on_result is not None:
                on_result(result)
            return result

        try:
            return list(await asyncio.gather(*(one(batch.add(p)) for p in paths)))
        finally:
            await batch.aclose()
