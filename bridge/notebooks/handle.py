"""A notebook opened for unit tests (testbook's job): run some of its cells, then call into it.

``AsyncNotebook`` does the work on an ``AsyncSession`` of its own; ``Notebook`` is its blocking
twin over a ``Bridge``. Values cross as JSON: arguments go in as call inputs (never pasted into
code), results come back as the bridge's values (JSON data, else the text repr).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import BridgeClosed, BridgeError, ExecutionResult, InvalidRequest
from bridge.notebooks.cells import CellRunner
from bridge.notebooks.options import DEFAULT_CELL_TIMEOUT
from bridge.notebooks.reading import cell_tags, display_name
from bridge.notebooks.report import NotebookResult
from bridge.notebooks.runner import open_notebook, prepare

if TYPE_CHECKING:
    from bridge import AsyncBridge, AsyncSession, Bridge

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _dotted(name: object, what: str) -> str:
    if not isinstance(name, str) or not _DOTTED.fullmatch(name):
        raise InvalidRequest(
            f"{what} must be a dotted Python name like 'module.func', got {name!r}"
        )
    return name


def _value(result: ExecutionResult) -> Any:
    return result.raise_for_error().value


class AsyncNotebook:
    """A notebook on a kernel of its own: run its cells, call its functions, patch, inspect.

    >>> nb = await AsyncNotebook.open(b, "notebooks/tour.ipynb", execute=True)  # doctest: +SKIP
    >>> await nb.ref("add")(1, 2)                                               # doctest: +SKIP
    3
    >>> await nb.aclose()                                                        # doctest: +SKIP
    """

    def __init__(self, session: AsyncSession, nb: Any, path: Path, runner: CellRunner) -> None:
        self.session = session
        self.notebook = nb
        self.path = path
        self.name = display_name(path)
        self._runner = runner
        self._coverage = False

    @classmethod
    async def open(
        cls,
        bridge: AsyncBridge,
        path: str | os.PathLike[str],
        *,
        execute: Any = False,
        timeout: float | None = None,
        params: dict[str, Any] | None = None,
        coverage: dict[str, Any] | None = None,
    ) -> AsyncNotebook:
        """Open *path* on a fresh kernel, its folder as working directory.

        *execute*: ``True`` runs every cell; a tag, a cell index, or a list of them runs those
        cells (in notebook order); ``False`` runs none. A failing cell raises
        ``NotebookFailed`` with the report, and the kernel is shut down. *coverage*
        (``NotebookOptions.coverage``) measures the kernel until ``aclose``.
        """
        path = Path(path)
        seconds = timeout or DEFAULT_CELL_TIMEOUT
        prepared = await prepare(
            bridge, path, name=display_name(path), timeout=seconds, params=params or {}
        )
        runner = await open_notebook(bridge, prepared, coverage=coverage)
        try:
            handle = cls(runner.session, runner.nb, path, runner)
            handle._coverage = coverage is not None
            if execute is not False:
                await handle.execute(execute)
        except BaseException:
            await runner.aclose()
            raise
        return handle

    def cell_indices(self, cells: Any) -> list[int]:
        """The indices of the code cells *cells* names: True, a tag, an index, or a list."""
        all_code = [i for i, c in enumerate(self.notebook.cells) if c.cell_type == "code"]
        if cells is True:
            return all_code
        items: Iterable[Any] = (
            [cells] if isinstance(cells, (str, int)) and not isinstance(cells, bool) else cells
        )
        found: set[int] = set()
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise InvalidRequest(f"cells are named by tag (str) or index (int), got {item!r}")
            if isinstance(item, int):
                count = len(self.notebook.cells)
                if not -count <= item < count:
                    raise InvalidRequest(f"{self.name} has no cell {item} (it has {count})")
                index = item % count
                if self.notebook.cells[index].cell_type != "code":
                    raise InvalidRequest(f"{self.name}: cells[{index}] is not a code cell")
                found.add(index)
            else:
                tagged = [i for i in all_code if item in cell_tags(self.notebook.cells[i])]
                if not tagged:
                    raise InvalidRequest(f"{self.name} has no code cell tagged {item!r}")
                found.update(tagged)
        return sorted(found)

    async def execute(self, cells: Any = True) -> None:
        """Run *cells* (see ``open``); raise ``NotebookFailed`` if one fails."""
        failure = await self._runner.run(self.cell_indices(cells))
        if failure is not None:
            result = NotebookResult(
                path=self.path,
                name=self.name,
                status="failed",
                failures=[failure],
                notebook=self.notebook,
                cells_run=self._runner.ran,
                code_cells=sum(1 for c in self.notebook.cells if c.cell_type == "code"),
            )
            result.raise_for_failure()

    def ref(self, name: str) -> AsyncRef:
        """A reference to *name* in the notebook, testbook style: ``await nb.ref("add")(1, 2)``
        calls it; ``nb.ref("model").fit`` is a further reference, ``await``-ed for its value.

        Any result that is JSON comes back as a value; any other object stays in the kernel and
        comes back as a further ``AsyncRef``, held until the notebook's kernel shuts down (the
        ``notebook`` fixture shuts it down when the test ends).
        """
        return AsyncRef(self, _dotted(name, "ref()"))

    async def _resolve(self, expr: str, call: tuple[list[Any], dict[str, Any]] | None) -> Any:
        """The value of *expr* (called with *call*'s arguments if given) or a reference to it."""
        code = "__kb_v__ = " + (expr + "(*__kb_args__, **__kb_kwargs__)" if call else expr)
        inputs: dict[str, Any] = {"__kb_key__": uuid.uuid4().hex[:12]}
        if call is not None:
            inputs.update(__kb_args__=call[0], __kb_kwargs__=call[1])
        found = _value(await self.session.execute(_RESOLVE.format(code=code), inputs=inputs))
        if isinstance(found, dict) and "ref" in found:
            return AsyncRef(self, f"__kb_refs__[{found['ref']!r}]", str(found.get("type", "")))
        return found["value"] if isinstance(found, dict) else found

    async def value(self, expr: str) -> Any:
        """The value of *expr* in the notebook: JSON data as is, anything else as its repr."""
        return _value(await self.session.evaluate(expr))

    async def inject(self, code: str) -> ExecutionResult:
        """Run *code* in the notebook's namespace; raise ``ExecutionError`` if it fails."""
        return (await self.session.execute(code)).raise_for_error()

    def cell_output(self, cell: int | str) -> list[dict[str, Any]]:
        """The outputs of an executed cell (by index or tag) as MIME bundles.

        Rich outputs give their data (``{"text/plain": ..., "image/png": ...}``), streams
        ``{"text/plain": text}``, errors ``{"text/plain": "Name: message"}``.
        """
        indices = self.cell_indices(cell)
        index = indices[0]
        if index not in self._runner.executed:
            raise InvalidRequest(
                f"{self.name}: cells[{index}] has not run; pass it in execute= or execute() it"
            )
        bundles = []
        for output in self.notebook.cells[index].outputs:
            kind = output.get("output_type")
            if kind == "stream":
                bundles.append({"text/plain": output.get("text", "")})
            elif kind == "error":
                bundles.append({"text/plain": f"{output.get('ename')}: {output.get('evalue')}"})
            else:
                bundles.append(dict(output.get("data") or {}))
        return bundles

    @contextlib.asynccontextmanager
    async def patch(self, target: str, **kwargs: Any) -> AsyncIterator[AsyncPatch]:
        """``unittest.mock.patch(target, **kwargs)`` inside the kernel, undone at exit even when
        the block fails. *kwargs* are JSON (``return_value=...``, ``side_effect=[...]``)."""
        _dotted(target, "patch()")
        key = uuid.uuid4().hex[:12]
        code = (
            "__kb_patches__ = globals().setdefault('__kb_patches__', {})\n"
            "__kb_p__ = __import__('unittest.mock', fromlist=['patch'])"
            ".patch(__kb_target__, **__kb_kwargs__)\n"
            "__kb_patches__[__kb_key__] = (__kb_p__, __kb_p__.start())\n"
            "del __kb_p__, __kb_target__, __kb_kwargs__, __kb_key__"
        )
        inputs = {"__kb_target__": target, "__kb_kwargs__": kwargs, "__kb_key__": key}
        (await self.session.execute(code, inputs=inputs)).raise_for_error()
        try:
            yield AsyncPatch(self, key)
        finally:
            with contextlib.suppress(BridgeError):  # a dead kernel has nothing left to undo
                undo = f"__kb_patches__.pop({key!r})[0].stop()"
                (await self.session.execute(undo)).raise_for_error()

    async def aclose(self) -> None:
        """Shut the notebook's kernel down (its coverage data written first)."""
        if self._coverage:
            self._coverage = False
            with contextlib.suppress(BridgeError):  # a dead kernel took its data with it
                await self._runner.stop_coverage()
        await self.session.aclose()


# Runs *code* (which sets __kb_v__) and returns {"value": v} when v is JSON, else keeps v in the
# kernel's __kb_refs__ and returns {"ref": key, "type": name}; the temporaries are deleted.
_RESOLVE = """\
try:
    {code}
    try:
        __import__("json").dumps(__kb_v__, allow_nan=False)
        return {{"value": __kb_v__}}
    except (TypeError, ValueError, OverflowError, RecursionError):
        globals().setdefault("__kb_refs__", {{}})[__kb_key__] = __kb_v__
        return {{"ref": __kb_key__, "type": type(__kb_v__).__qualname__}}
finally:
    for __kb_n__ in ("__kb_v__", "__kb_key__", "__kb_args__", "__kb_kwargs__", "__kb_n__"):
        globals().pop(__kb_n__, None)
"""


class AsyncRef:
    """An object in a notebook's kernel (``AsyncNotebook.ref``): attributes are further
    references, calls run in the kernel, ``await`` gives the value (or a reference to an object
    that is not JSON).

    >>> model = await nb.ref("make_model")(3)       # doctest: +SKIP
    >>> await model.predict([1, 2])                  # doctest: +SKIP
    [2.5, 4.1]
    >>> await model.params.depth                     # doctest: +SKIP
    3
    """

    def __init__(self, notebook: AsyncNotebook, expr: str, type_name: str = "") -> None:
        self._notebook = notebook
        self._expr = expr
        self.type_name = type_name  # the object's type, when it came back as a reference

    def __getattr__(self, attr: str) -> AsyncRef:
        if attr.startswith("__") or not attr.isidentifier():
            raise AttributeError(attr)
        return AsyncRef(self._notebook, f"{self._expr}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._notebook._resolve(self._expr, (list(args), kwargs))

    def __await__(self) -> Generator[Any, None, Any]:
        return self._notebook._resolve(self._expr, None).__await__()

    def __repr__(self) -> str:
        kind = f" ({self.type_name})" if self.type_name else ""
        return f"<reference {self._expr}{kind} in {self._notebook.name}>"


class AsyncPatch:
    """What a patch made: ``call_count`` and ``calls`` of the mock in the kernel."""

    def __init__(self, notebook: AsyncNotebook, key: str) -> None:
        self._notebook = notebook
        self._mock = f"__kb_patches__[{key!r}][1]"

    async def call_count(self) -> int:
        return int(await self._notebook.value(f"{self._mock}.call_count"))

    async def calls(self) -> list[Any]:
        """Each call as ``[args, kwargs]`` (JSON where the arguments are JSON)."""
        value = await self._notebook.value(
            f"[[list(c.args), dict(c.kwargs)] for c in {self._mock}.call_args_list]"
        )
        return list(value) if isinstance(value, list) else [value]


class Notebook:
    """The blocking twin of ``AsyncNotebook``, made by the ``notebook`` fixture.

    >>> nb = Notebook.open(b, "notebooks/tour.ipynb", execute=True)   # doctest: +SKIP
    >>> nb.ref("add")(1, 2), nb.value("total")                          # doctest: +SKIP
    (3, 10)
    """

    def __init__(self, bridge: Bridge, handle: AsyncNotebook) -> None:
        self._bridge = bridge
        self._async = handle
        self._closed = False

    @classmethod
    def open(
        cls,
        bridge: Bridge,
        path: str | os.PathLike[str],
        *,
        execute: Any = False,
        timeout: float | None = None,
        params: dict[str, Any] | None = None,
        coverage: dict[str, Any] | None = None,
    ) -> Notebook:
        handle = bridge.call(
            AsyncNotebook.open,
            bridge.async_bridge,
            path,
            execute=execute,
            timeout=timeout,
            params=params,
            coverage=coverage,
        )
        return cls(bridge, handle)

    @property
    def notebook(self) -> Any:
        """The notebook (nbformat 4), with the outputs of the cells run so far."""
        return self._async.notebook

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise BridgeClosed(f"the notebook {self._async.name} is closed")
        return self._bridge.call(fn, *args, **kwargs)

    def execute(self, cells: Any = True) -> None:
        self._call(self._async.execute, cells)

    def ref(self, name: str) -> Ref:
        """A reference to *name* in the notebook (see ``AsyncNotebook.ref``); blocking, so an
        attribute is looked up at once: ``nb.ref("model").params.depth == 3``."""
        return Ref(self, self._async.ref(name))

    def value(self, expr: str) -> Any:
        return self._call(self._async.value, expr)

    def inject(self, code: str) -> ExecutionResult:
        result: ExecutionResult = self._call(self._async.inject, code)
        return result

    def cell_output(self, cell: int | str) -> list[dict[str, Any]]:
        return self._async.cell_output(cell)

    @contextlib.contextmanager
    def patch(self, target: str, **kwargs: Any) -> Iterator[Patch]:
        """``with nb.patch("requests.get", return_value={...}) as mock: ...``"""
        manager = self._async.patch(target, **kwargs)
        handle = self._call(manager.__aenter__)
        try:
            yield Patch(self, handle)
        except BaseException as exc:
            if not self._call(manager.__aexit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            self._call(manager.__aexit__, None, None, None)

    def close(self) -> None:
        """Shut the notebook's kernel down; idempotent."""
        if not self._closed:
            self._closed = True
            self._bridge.call(self._async.aclose)


class Ref:
    """The blocking twin of ``AsyncRef``: ``nb.ref("obj").attr.method(2)``. Each attribute and
    call asks the kernel: a JSON result is the value, any other object a further ``Ref``."""

    def __init__(self, notebook: Notebook, ref: AsyncRef) -> None:
        self._notebook = notebook
        self._ref = ref

    def _wrap(self, found: Any) -> Any:
        return Ref(self._notebook, found) if isinstance(found, AsyncRef) else found

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or not attr.isidentifier():
            raise AttributeError(attr)
        remote = getattr(self._ref, attr)
        return self._wrap(self._notebook._call(remote._notebook._resolve, remote._expr, None))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._notebook._call(self._ref, *args, **kwargs))

    @property
    def type_name(self) -> str:
        return self._ref.type_name

    def __repr__(self) -> str:
        return repr(self._ref)


class Patch:
    """The blocking twin of ``AsyncPatch``."""

    def __init__(self, notebook: Notebook, handle: AsyncPatch) -> None:
        self._notebook = notebook
        self._async = handle

    @property
    def call_count(self) -> int:
        count: int = self._notebook._call(self._async.call_count)
        return count

    @property
    def calls(self) -> list[Any]:
        calls: list[Any] = self._notebook._call(self._async.calls)
        return calls
