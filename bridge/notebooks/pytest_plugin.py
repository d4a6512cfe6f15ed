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
    from bridge.notebooks.report import CellFailure, NotebookResult
    from bridge.notebooks.runner import Batch

_RUNNER = pytest.StashKey["_NotebookRunner"]()


def _loads(pluginmanager: pytest.PytestPluginManager, name: str) -> bool:
    """Whether the pytest plugin *name* (nbval, nbmake) is, or will be, loaded in this run:
    registered already, or installed and neither blocked (``-p no:NAME``) nor left out by
    PYTEST_DISABLE_PLUGIN_AUTOLOAD. Asked before it may have registered its options."""
    if pluginmanager.has_plugin(name):
        return True
    if pluginmanager.is_blocked(name) or os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    import importlib.util

    return importlib.util.find_spec(name) is not None


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
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
    group.addoption(
        "--nb-lax",
        action="store_true",
        help="with --nb-compare, compare only the cells marked NBVAL_CHECK_OUTPUT "
        "(or tagged nbval-check-output), as nbval's --nbval-lax does",
    )
    group.addoption(
        "--nb-cells",
        action="store_true",
        help="one test item per code cell, named 'Cell N' as nbval names them (the notebook "
        "still runs as a whole; cells after a failing one are skipped)",
    )
    _add_aliases(group, pluginmanager)


def _add_aliases(group: Any, pluginmanager: pytest.PytestPluginManager) -> None:
    """nbval's and nbmake's options, for projects that switch without editing their CI: only
    when that plugin is not loaded (it owns its options then; see ``_refuse_both``)."""
    if not _loads(pluginmanager, "nbval"):
        group.addoption(
            "--nbval",
            dest="kb_nbval",
            action="store_true",
            help="(nbval's) --nb --nb-compare --nb-cells, without kernel-bridge's own "
            "address and timestamp masks",
        )
        group.addoption(
            "--nbval-lax",
            dest="kb_nbval_lax",
            action="store_true",
            help="(nbval's) --nbval --nb-lax",
        )
        group.addoption(
            "--nbval-sanitize-with", dest="kb_sanitize_with", help="(nbval's) --nb-sanitize-with"
        )
        group.addoption(
            "--nbval-cell-timeout",
            dest="kb_cell_timeout",
            type=float,
            help="(nbval's) --nb-timeout",
        )
        group.addoption(
            "--nbval-kernel-name",
            dest="kb_kernel",
            help="(nbval's) the kernel every notebook runs on (a Python one)",
        )
        group.addoption(
            "--nbval-current-env",
            dest="kb_current_env",
            action="store_true",
            help="(nbval's) accepted: kernels run this interpreter unless --nb-python says",
        )
    if not _loads(pluginmanager, "nbmake"):
        group.addoption("--nbmake", dest="kb_nbmake", action="store_true", help="(nbmake's) --nb")
        group.addoption(
            "--nbmake-timeout", dest="kb_cell_timeout", type=float, help="(nbmake's) --nb-timeout"
        )
        group.addoption(
            "--nbmake-kernel",
            dest="kb_kernel",
            help="(nbmake's) the kernel every notebook runs on (a Python one)",
        )
        group.addoption(
            "--nbmake-find-import-errors",
            dest="kb_import_errors",
            action="store_true",
            help="(nbmake's) run every cell; fail only on a ModuleNotFoundError",
        )
        group.addoption(
            "--overwrite",
            dest="kb_overwrite",
            action="store_true",
            help="(nbmake's) write each executed notebook over its source",
        )


def _opt(config: pytest.Config, name: str, default: Any = None) -> Any:
    return getattr(config.option, name, default)


def _enabled(config: pytest.Config) -> bool:
    """--nb, or one of the nbval / nbmake aliases that turn it on."""
    return bool(
        config.getoption("nb")
        or _opt(config, "kb_nbval")
        or _opt(config, "kb_nbval_lax")
        or _opt(config, "kb_nbmake")
    )


def _refuse_both(config: pytest.Config) -> None:
    """Both plugins would collect every notebook: say so, and how to choose."""
    for name, flags in (("nbval", ("nbval", "nbval_lax")), ("nbmake", ("nbmake",))):
        if any(_opt(config, flag) for flag in flags):
            raise pytest.UsageError(
                f"kernel-bridge: {name} is installed, so --{flags[0].replace('_', '-')} runs "
                f"{name} itself, and --nb would run every notebook a second time. Choose one: "
                f"drop --nb, or keep it and run with -p no:{name} (kernel-bridge then takes "
                f"{name}'s options as its own)."
            )


def pytest_configure(config: pytest.Config) -> None:
    if _enabled(config):  # bad options are a usage error now, not a failure per notebook
        _refuse_both(config)
        options = _options(config)
        if hasattr(config, "workerinput") and options.workers > 1:
            # A pytest-xdist worker: xdist decides which notebooks it runs, so starting the
            # next ones ahead would run notebooks another worker has. One at a time here.
            options.workers = 1
        cells = (
            config.getoption("nb_cells") or _opt(config, "kb_nbval") or _opt(config, "kb_nbval_lax")
        )
        config.stash[_RUNNER] = _NotebookRunner(options, cells=bool(cells))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if _RUNNER not in parent.config.stash:
        return None
    if file_path.suffix != ".ipynb" or ".ipynb_checkpoints" in file_path.parts:
        return None
    return NotebookFile.from_parent(parent, path=file_path)


class NotebookFile(pytest.File):
    """One notebook file; it holds one test item, the whole notebook, or with --nb-cells one
    per code cell (a notebook that cannot be read stays one item, which reports why)."""

    def collect(self) -> Iterator[pytest.Item]:
        if not self.config.stash[_RUNNER].cells:
            yield NotebookItem.from_parent(self, name=self.path.name)
            return
        from bridge import InvalidNotebook
        from bridge.notebooks.reading import read_notebook

        try:
            nb = read_notebook(self.path)
        except InvalidNotebook:
            yield NotebookItem.from_parent(self, name=self.path.name)
            return
        code = [i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]
        for number, index in enumerate(code):
            yield NotebookCellItem.from_parent(
                self, name=f"Cell {number}", index=index, last=number == len(code) - 1
            )


class NotebookItem(pytest.Item):
    """A notebook run as one test on a fresh kernel from the plugin's pool."""

    def runtest(self) -> None:
        result = self.config.stash[_RUNNER].result(self.path, self.nodeid)
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


class NotebookCellItem(NotebookItem):
    """One code cell of a notebook run as a whole (--nb-cells): its own verdict, named as
    nbval names it (``path::Cell N``, N counting code cells), so ``-k`` and ``--lf`` pick cells.

    The notebook runs once, when its first selected cell is reached; each cell then reports
    what became of it: passed, failed (it raised, ran past its timeout, its outputs differ),
    skipped (marked NBVAL_SKIP or skip-execution, or after a cell that stopped the run).
    """

    def __init__(self, *, index: int, last: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.last = last

    def runtest(self) -> None:
        assert isinstance(self.parent, NotebookFile)
        runner = self.config.stash[_RUNNER]
        result = runner.result(self.path, self.parent.nodeid, keep=not self.last)
        self.user_properties.append(("notebook_duration", round(result.duration, 3)))
        if result.error:
            raise _Failed(result)
        from bridge.notebooks.reading import cell_marks

        for failure in result.failures:
            if failure.index == self.index:
                raise _CellFailed(result, failure)
        stopped = [f.index for f in result.failures if f.kind != "mismatch"]
        if stopped and self.index > stopped[0]:
            pytest.skip(f"not run: cells[{stopped[0]}] stopped the notebook before it")
        if cell_marks(result.notebook.cells[self.index]).skip:
            pytest.skip("marked NBVAL_SKIP / tagged skip-execution")

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, _CellFailed):
            failure = excinfo.value.failure
            name = excinfo.value.result.name
            return _Report(f"{name}: {failure.headline}\n\n{failure.report()}", failure.headline)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"[notebook] {self.nodeid}"


class _CellFailed(Exception):
    def __init__(self, result: NotebookResult, failure: CellFailure) -> None:
        super().__init__(failure.headline)
        self.result = result
        self.failure = failure


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

    nbval = bool(_opt(config, "kb_nbval") or _opt(config, "kb_nbval_lax"))
    timeout = _opt(config, "kb_cell_timeout") or config.getoption("nb_timeout")
    try:
        return build_options(
            flag="--nb-",
            timeout=timeout,
            params=config.getoption("nb_param"),
            compare=config.getoption("nb_compare") or nbval,
            sanitize=config.getoption("nb_sanitize"),
            sanitize_with=config.getoption("nb_sanitize_with") or _opt(config, "kb_sanitize_with"),
            write=config.getoption("nb_write"),
            workers=config.getoption("nb_workers"),
            python=config.getoption("nb_python"),
            root=config.rootpath,
            lax=config.getoption("nb_lax") or bool(_opt(config, "kb_nbval_lax")),
            # nbval masks nothing unless its sanitizer file says so: --nbval is nbval's verdict.
            default_sanitizers=not nbval,
            kernel=_opt(config, "kb_kernel"),
            import_errors_only=bool(_opt(config, "kb_import_errors")),
            overwrite=bool(_opt(config, "kb_overwrite")),
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

    def __init__(self, options: NotebookOptions, *, cells: bool = False) -> None:
        self.options = options
        self.cells = cells
        self._bridge: Bridge | None = None
        self._batch: Batch | None = None
        self._started: concurrent.futures.Future[None] | None = None
        self._position: dict[str, int] = {}
        self._results: dict[str, NotebookResult] = {}  # --nb-cells: for the cells still to ask

    @staticmethod
    def _key(item: pytest.Item) -> tuple[str, Path]:
        """A notebook item's notebook: (its file's node id, its path)."""
        node = item.parent if isinstance(item, NotebookCellItem) else item
        assert node is not None
        return node.nodeid, item.path

    def plan(self, items: list[pytest.Item]) -> None:
        """Take the collected notebook items, in run order, and start warming the kernels."""
        self._start(dict(self._key(i) for i in items if isinstance(i, NotebookItem)))

    def _start(self, queue: dict[str, Path]) -> None:
        if not queue or self._bridge is not None:
            return
        from bridge import Bridge
        from bridge.notebooks.runner import Batch, bridge_settings

        self._bridge = Bridge(**bridge_settings(self.options, len(queue)))
        self._batch = Batch(self._bridge.async_bridge, self.options)
        self._position = {key: self._batch.add(path) for key, path in queue.items()}
        self._started = self._bridge.submit(self._bridge.async_bridge.start)

    def result(self, path: Path, key: str, *, keep: bool = False) -> NotebookResult:
        """The result of the notebook at *path* (*key*: its file's node id), run when first
        asked; *keep* it for the next item that asks (its other cells)."""
        if key in self._results:
            return self._results[key] if keep else self._results.pop(key)
        if self._bridge is None:
            self._start({key: path})
        assert self._bridge is not None and self._batch is not None
        assert self._started is not None
        self._started.result()  # a kernel that cannot start fails every notebook item with why
        position = self._position.get(key, -1)
        if position < 0:  # not collected as planned: run it after the others
            position = self._position[key] = self._batch.add(path)
        future = self._bridge.submit(self._batch.result, position)
        try:
            result = future.result()
        except BaseException:
            future.cancel()  # stopped by a timeout or Ctrl-C: stop the notebook as well
            raise
        if keep:
            self._results[key] = result
        return result

    def close(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is None:
            return
        if self._batch is not None:
            stopping = bridge.submit(self._batch.aclose)
            concurrent.futures.wait([stopping], timeout=10)
        bridge.close()


def _coverage(config: pytest.Config) -> dict[str, Any] | None:
    """coverage.Coverage's arguments for the notebooks' kernels when pytest-cov measures this
    run (``--cov``): its sources, branch setting and configuration, and a data file beside its
    own, which it combines into its report (with xdist, the controller's on each worker)."""
    plugin = config.pluginmanager.get_plugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    cov = getattr(controller, "cov", None)
    if controller is None or cov is None:
        return None
    top = Path(controller.topdir)
    return {
        "cwd": str(top),  # where relative sources and the configuration are found
        "data_file": str(top / cov.config.data_file),
        "source": controller.cov_source,
        "branch": controller.cov_branch,
        "config_file": controller.cov_config,
    }


def pytest_collection_finish(session: pytest.Session) -> None:
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None and not session.config.option.collectonly:
        runner.options.coverage = _coverage(session.config)
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
    coverage = _coverage(request.config)  # under --cov, the notebooks' kernels are measured

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
        nb = Notebook.open(
            bridge, found, execute=execute, timeout=timeout, params=params, coverage=coverage
        )
        opened.append(nb)
        return nb

    try:
        yield open_notebook
    finally:
        for nb in reversed(opened):
            nb.close()
