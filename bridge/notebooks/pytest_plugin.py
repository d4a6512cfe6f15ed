"""kernel-bridge's pytest plugin: notebooks as tests (``pytest --nb``) and the fixtures
``bridge`` and ``notebook``.

Registered with the ``pytest11`` entry point, so it is loaded in every pytest run of a project
that installs kernel-bridge: without ``--nb`` and without the fixtures it costs nothing. nbformat
and the kernel machinery are imported only when a notebook is collected or a fixture is used.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _pytest._code.code import ReprFileLocation, TerminalRepr

from bridge import BridgeError

if TYPE_CHECKING:
    from _pytest._io import TerminalWriter

    from bridge import Bridge
    from bridge.notebooks.handle import Notebook
    from bridge.notebooks.options import NotebookOptions
    from bridge.notebooks.report import NotebookResult
    from bridge.notebooks.runner import Batch

_RUNNER = pytest.StashKey["_NotebookRunner"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kernel-bridge", "notebooks as tests (kernel-bridge)")
    group.addoption(
        "--nb",
        action="store_true",
        help="collect *.ipynb files as tests, one per notebook, run on warm kernels",
    )
    group.addoption(
        "--nb-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time limit of each cell; a cell past it is interrupted (default 300)",
    )
    group.addoption(
        "--nb-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a parameter in a cell added after the cell tagged 'parameters' "
        "(a Python literal, else a string); repeatable",
    )
    group.addoption(
        "--nb-compare",
        action="store_true",
        help="fail a notebook whose fresh outputs differ from its stored outputs",
    )
    group.addoption(
        "--nb-sanitize",
        action="append",
        default=[],
        metavar="REGEX",
        help="with --nb-compare, mask what REGEX matches before comparing; repeatable",
    )
    group.addoption(
        "--nb-sanitize-with",
        metavar="FILE",
        help="with --nb-compare, the sanitizers of FILE (nbval's format: INI sections with "
        "regex and replace)",
    )
    group.addoption(
        "--nb-write",
        metavar="DIR",
        help="write each executed notebook, outputs and all, under DIR",
    )
    group.addoption(
        "--nb-python",
        metavar="PYTHON",
        help="the interpreter that runs the notebooks' kernels (it needs ipykernel)",
    )
    group.addoption(
        "--nb-workers",
        type=int,
        default=1,
        metavar="N",
        help="run N notebooks at once on a pool of N warm kernels (default 1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("nb"):  # bad options are a usage error now, not a failure per notebook
        config.stash[_RUNNER] = _NotebookRunner(_options(config))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if not parent.config.getoption("nb"):
        return None
    if file_path.suffix != ".ipynb" or ".ipynb_checkpoints" in file_path.parts:
        return None
    return NotebookFile.from_parent(parent, path=file_path)


class NotebookFile(pytest.File):
    """One notebook file; it holds one test item, the whole notebook."""

    def collect(self) -> Iterator[pytest.Item]:
        yield NotebookItem.from_parent(self, name=self.path.name)


class NotebookItem(pytest.Item):
    """A notebook run as one test on a fresh kernel from the plugin's pool."""

    def runtest(self) -> None:
        result = self.config.stash[_RUNNER].result(self)
        self.user_properties.append(("notebook_duration", round(result.duration, 3)))
        if not result.passed:
            raise _Failed(result)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, _Failed):
            result = excinfo.value.result
            return _Report(result.report(), result.headline)
        if isinstance(excinfo.value, BridgeError):  # no kernel could start, for one
            message = f"{type(excinfo.value).__name__}: {excinfo.value}"
            return _Report(message, message.splitlines()[0])
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # As pytest's doctest items: "[notebook] path" heads the failure section, and a domain
        # that is not the end of the node id keeps `pytest -v` from rewriting its dots as "::".
        return self.path, None, f"[notebook] {self.nodeid.split('::')[0]}"


class _Failed(Exception):
    def __init__(self, result: NotebookResult) -> None:
        super().__init__(result.headline)
        self.result = result


class _Report(TerminalRepr):
    """The failure report as it is, and its headline for pytest's short summary."""

    def __init__(self, text: str, headline: str) -> None:
        self.text = text
        self.reprcrash = ReprFileLocation("", 0, headline)

    def toterminal(self, tw: TerminalWriter) -> None:
        tw.line(self.text)

    def __str__(self) -> str:
        return self.text


def _options(config: pytest.Config) -> NotebookOptions:
    from bridge import InvalidRequest
    from bridge.notebooks.options import build_options

    try:
        return build_options(
            flag="--nb-",
            timeout=config.getoption("nb_timeout"),
            params=config.getoption("nb_param"),
            compare=config.getoption("nb_compare"),
            sanitize=config.getoption("nb_sanitize"),
            sanitize_with=config.getoption("nb_sanitize_with"),
            write=config.getoption("nb_write"),
            workers=config.getoption("nb_workers"),
            python=config.getoption("nb_python"),
            root=config.rootpath,
        )
    except InvalidRequest as exc:
        raise pytest.UsageError(f"kernel-bridge: {exc}") from None


class _NotebookRunner:
    """The session's notebooks on one blocking bridge (its loop in its own thread), through
    the shared ``Batch``.

    The bridge's kernels start in the background once collection has found notebooks. Each
    item asks the batch for its own notebook, which starts it and the next N-1 (N workers):
    reports stay per notebook, and a per-test timeout (pytest-timeout) still measures one
    notebook, whose run it then stops.
    """

    def __init__(self, options: NotebookOptions) -> None:
        self.options = options
        self._bridge: Bridge | None = None
        self._batch: Batch | None = None
        self._started: concurrent.futures.Future[None] | None = None
        self._position: dict[str, int] = {}

    def plan(self, items: list[pytest.Item]) -> None:
        """Take the collected notebook items, in run order, and start warming the kernels."""
        queue = [i for i in items if isinstance(i, NotebookItem)]
        if not queue or self._bridge is not None:
            return
        from bridge import Bridge
        from bridge.notebooks.runner import Batch, bridge_settings

        self._bridge = Bridge(**bridge_settings(self.options, len(queue)))
        self._batch = Batch(self._bridge.async_bridge, self.options)
        self._position = {item.nodeid: self._batch.add(item.path) for item in queue}
        self._started = self._bridge.submit(self._bridge.async_bridge.start)

    def result(self, item: NotebookItem) -> NotebookResult:
        if self._bridge is None:
            self.plan([item])
        assert self._bridge is not None and self._batch is not None
        assert self._started is not None
        self._started.result()  # a kernel that cannot start fails every notebook item with why
        position = self._position.get(item.nodeid)
        if position is None:  # not collected as planned: run it after the others
            position = self._position[item.nodeid] = self._batch.add(item.path)
        future = self._bridge.submit(self._batch.result, position)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # stopped by a timeout or Ctrl-C: stop the notebook as well
            raise

    def close(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is None:
            return
        if self._batch is not None:
            stopping = bridge.submit(self._batch.aclose)
            concurrent.futures.wait([stopping], timeout=10)
        bridge.close()


def pytest_collection_finish(session: pytest.Session) -> None:
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None and not session.config.option.collectonly:
        runner.plan(session.items)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # tryfirst: the kernels are gone before any other plugin checks for leftover kernels.
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None:
        runner.close()


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(name="bridge", scope="session")
def _bridge_fixture() -> Iterator[Bridge]:
    """A blocking ``bridge.Bridge`` for the whole test session (one warm kernel).

    >>> def test_sum(bridge):
    ...     assert bridge.evaluate("sum(range(4))").value == 6
    """
    from bridge import Bridge

    with Bridge(pool_size=1) as b:
        yield b


@pytest.fixture(name="notebook")
def _notebook_fixture(
    bridge: Bridge, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Notebook]]:
    """Open notebooks on kernels of their own, testbook style; each kernel is shut down when the
    test ends.

    >>> def test_add(notebook):
    ...     nb = notebook("notebooks/analysis.ipynb", execute=True)
    ...     assert nb.ref("add")(1, 2) == 3
    """
    from bridge.notebooks.handle import Notebook

    opened: list[Notebook] = []
    root = request.config.rootpath

    def open_notebook(
        path: str | os.PathLike[str],
        *,
        execute: Any = False,
        timeout: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> Notebook:
        found = Path(path)
        if not found.is_absolute() and not found.exists() and (root / found).exists():
            found = root / found
        nb = Notebook.open(bridge, found, execute=execute, timeout=timeout, params=params)
        opened.append(nb)
        return nb

    try:
        yield open_notebook
    finally:
        for nb in reversed(opened):
            nb.close()
