"""Kernel side of one bridge call: value, isolation, inputs, attest(), variables.

The host marks its execute_requests with ``metadata={"kernel_bridge": {...}}``. IPython hands a
request's metadata to the ``pre_run_cell``/``post_run_cell`` events as ``info.cell_meta``, so every
per-call option travels inside the message: the host never pastes data into code, and a cell run
by a person from JupyterLab (no such metadata) behaves exactly as in any IPython kernel.

Records made during a call (attestations, captured variables) go back on a comm the host opens
with target ``kernel-bridge``. ipykernel sends comm messages on IOPub with the current request as
parent, so the host files each record under the call that made it, before that call's idle status.

The host sends its calls on that comm too (``{"kind": "execute", "code", "meta"}``), and
``Hooks.run`` runs them with IPython's own pieces (transform_cell, transform_ast, run_ast_nodes,
the displayhook, showtraceback). That skips what an execute_request costs beyond the cell itself
(the execute_input broadcast, a second compile to test for top-level await, the reply and
status bookkeeping), about half of a trivial call. Code with a top-level ``await`` needs the
kernel's event loop, so for it the runtime answers ``fallback`` and the host sends a plain
execute_request, which the same hooks see through ``pre_run_cell``/``post_run_cell``.
"""

from __future__ import annotations

import ast
import builtins
import datetime
import linecache
import math
import os
import sys
import uuid
from typing import Any

from . import _wire
from .protocol import (
    ATTESTATION,
    BINARY,
    EXECUTE,
    EXECUTE_COMM,
    META_KEY,
    PING,
    PONG,
    REPLY,
    REPLY_BINARY,
    REPLY_VALUE,
    VARIABLES,
)

_REPR_LIMIT = 10_000


class _Return(BaseException):
    """A rewritten top-level ``return``; a BaseException, so ``except Exception`` misses it."""

    slot: Any = None

    def __init__(self, value: Any = None) -> None:
        super().__init__()
        self.value = value

    @classmethod
    def store(cls, exc: _Return) -> None:
        cls.slot = exc.value

    @classmethod
    def take(cls) -> Any:
        value, cls.slot = cls.slot, None
        return value


class _State:
    """What the runtime knows about the request being run (one at a time per kernel)."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] | None = None  # the running bridge call's options
        self.comm: Any = None  # the host's comm, once it has opened one
        self.baseline: dict[str, Any] = {}  # user namespace of a fresh kernel
        self.injected: dict[str, Any] = {}
        # The value of the running call when it holds bytes or NumPy arrays: it goes to the
        # host itself, as buffers of the reply (its MIME bundle stays what IPython makes).
        self.binary: Any = None
        self.reply_buffers: list[Any] = []
        self.in_run = False  # run() is serving the call (else a plain execute_request)


STATE = _State()


# -- values ---------------------------------------------------------------------------------------


def json_value(obj: Any, _depth: int = 0) -> tuple[bool, Any]:
    """(True, JSON form) if *obj* is plain JSON data (str keys, finite floats), else (False, None).

    Stricter than ``json.dumps``: ``{1: "a"}`` or ``nan`` would travel but not come back as sent.
    """
    if _depth > 100:
        return False, None
    if obj is None or isinstance(obj, (bool, int, str)):
        return True, obj
    if isinstance(obj, float):
        return (True, obj) if math.isfinite(obj) else (False, None)
    if isinstance(obj, (list, tuple)):
        out = []
        for item in obj:
            ok, value = json_value(item, _depth + 1)
            if not ok:
                return False, None
            out.append(value)
        return True, out
    if isinstance(obj, dict):
        result = {}
        for key, item in obj.items():
            if not isinstance(key, str):
                return False, None
            ok, value = json_value(item, _depth + 1)
            if not ok:
                return False, None
            result[key] = value
        return True, result
    return False, None


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the call
        text = f"<unrepresentable {type(obj).__name__}: {exc!r}>"
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "..."


# -- top-level return -----------------------------------------------------------------------------

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _has_top_level_return(node: ast.AST) -> bool:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Return):
            return True
        if not isinstance(child, _SCOPES) and _has_top_level_return(child):
            return True
    return False


class _ReturnToRaise(ast.NodeTransformer):
    def visit_Return(self, node: ast.Return) -> ast.AST:
        value = node.value if node.value is not None else ast.Constant(None)
        call = ast.Call(ast.Name("__bridge_return__", ast.Load()), [value], [])
        return ast.copy_location(ast.Raise(exc=call, cause=None), node)

    def _skip(self, node: ast.AST) -> ast.AST:
        return node  # a return inside a def or class belongs to that function

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _skip


class CallTransformer(ast.NodeTransformer):
    """IPython AST transformer: top-level ``return`` for every cell, one-expression check for eval.

    Without a top-level ``return`` a cell is left as it is, so IPython's own rule (the value of
    the last expression) holds. With one, the body becomes::

        try:
            <body, each top-level `return X` as `raise __bridge_return__(X)`,
             a last expression statement as its return>
        except __bridge_return__ as r:
            __bridge_return__.store(r)
        __bridge_return__.take()     # the last expression: IPython displays it as the value
    """

    def visit_Module(self, node: ast.Module) -> ast.Module:
        meta = STATE.meta
        if meta is not None and meta.get("mode") == "eval" and not _is_one_expression(node):
            message = "evaluate() takes a single expression; use execute() for statements"
            raise_ = ast.Raise(
                ast.Call(ast.Name("SyntaxError", ast.Load()), [ast.Constant(message)], [])
            )
            node.body = [ast.copy_location(raise_, node.body[0]) if node.body else raise_]
            return node  # IPython's transform_ast fills in missing locations afterwards
        if not _has_top_level_return(node):
            return node
        body = list(node.body)
        last = body[-1]
        if isinstance(last, ast.Expr):
            body[-1] = ast.copy_location(ast.Return(last.value), last)
        rewriter = _ReturnToRaise()
        body = [rewriter.visit(stmt) for stmt in body]
        name = ast.Name("__bridge_return__", ast.Load())
        store = ast.Expr(
            ast.Call(
                ast.Attribute(name, "store", ast.Load()), [ast.Name("__bridge_r__", ast.Load())], []
            )
        )
        handler = ast.ExceptHandler(type=name, name="__bridge_r__", body=[store])
        wrapped = ast.Try(body=body, handlers=[handler], orelse=[], finalbody=[])
        take = ast.Expr(ast.Call(ast.Attribute(name, "take", ast.Load()), [], []))
        node.body = [ast.copy_location(wrapped, body[0]), ast.copy_location(take, last)]
        return node  # IPython's transform_ast fills in missing locations afterwards


def _awaits_at_top_level(node: ast.AST) -> bool:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
            return True
        if isinstance(child, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)) and any(
            g.is_async for g in child.generators
        ):
            return True
        if not isinstance(child, _SCOPES) and _awaits_at_top_level(child):
            return True
    return False


def _flush_streams() -> None:
    """Send what the streams hold before the reply: the host counts a call complete on its reply."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _skip_empty_flushes(stream: Any) -> None:
    """Make ipykernel's OutStream.flush return at once when nothing was written.

    Its flush hands work to the IOPub thread and waits for it, even with empty buffers, and
    every value shown costs two such flushes (the displayhook's), a third of a trivial call.
    With nothing buffered there is nothing to send or to order, so there is nothing to wait for.
    """
    flush = getattr(stream, "flush", None)
    buffers = getattr(stream, "_buffers", None)
    if flush is None or not isinstance(buffers, dict) or getattr(stream, "echo", None) is not None:
        return  # not the OutStream this was written for: leave it alone

    def quick_flush() -> None:
        if stream._buffers:
            flush()

    stream.flush = quick_flush


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (IPython's run_ast_nodes without await) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("kernel-bridge: the code awaited at top level")


def _is_one_expression(node: ast.Module) -> bool:
    return len(node.body) == 1 and isinstance(node.body[0], ast.Expr)


# -- records sent to the host ---------------------------------------------------------------------


def send_record(kind: str, payload: dict[str, Any], buffers: list[Any] | None = None) -> None:
    comm = STATE.comm
    if comm is not None:
        comm.send({"kind": kind, **payload}, buffers=buffers or None)


def _names(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def attest(
    subjects: Any,
    predicates: Any,
    contexts: Any = None,
    actors: Any = None,
    attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record an attestation: who (actors) says what (predicates) of what (subjects), where.

    >>> attest("user:alice", "reviewed", contexts="doc:42")["source"]
    'python'
    """
    ok, attrs = json_value(dict(attributes or {}))
    if not ok:
        raise TypeError("attest(): attributes must be JSON data (str keys, finite numbers)")
    record = {
        "id": str(uuid.uuid4()),
        "subjects": _names(subjects),
        "predicates": _names(predicates),
        "contexts": _names(contexts),
        "actors": _names(actors),
        "attributes": attrs,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        "source": "python",
    }
    ok, record = json_value(record)
    if not ok:
        raise TypeError("attest(): subjects, predicates, contexts and actors must be JSON values")
    send_record(ATTESTATION, {"record": record})
    return record


def _captured_variables(ns: dict[str, Any]) -> dict[str, Any]:
    import types

    skip = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
    out: dict[str, Any] = {}
    for name, value in list(ns.items()):
        if name.startswith("_") or isinstance(value, skip):
            continue
        if (
            STATE.baseline.get(name, _MISSING) is value
            or STATE.injected.get(name, _MISSING) is value
        ):
            continue
        ok, data = json_value(value)
        out[name] = data if ok else _short_repr(value)
    return out


_MISSING = object()


# -- IPython hooks ---------------------------------------------------------------------------


class Hooks:
    """pre/post_run_cell handlers and the displayhook tweak, bound to one shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self._format = shell.displayhook.compute_format_data

    def install(self) -> None:
        shell = self.shell
        builtins.__bridge_return__ = _Return  # type: ignore[attr-defined]
        shell.ast_transformers.append(CallTransformer())
        shell.events.register("pre_run_cell", self.pre_run_cell)
        shell.events.register("post_run_cell", self.post_run_cell)
        # The value of a bridge call also travels as application/json when it is JSON data.
        shell.displayhook.compute_format_data = self.compute_format_data
        shell.user_ns.setdefault("attest", attest)
        STATE.baseline = dict(shell.user_ns)
        self._cache = shell.compile.cache
        shell.compile.cache = self.cache_code

    def cache_code(self, transformed_code: str, number: int = 0, raw_code: Any = None) -> str:
        """Name the code of an execute_file after its file, so tracebacks show the script.

        IPython names a cell ``/tmp/ipykernel_<pid>/<hash>.py`` and its tracebacks say
        ``Cell In[n]``; a script run from a file should say ``File "/path/script.py"``.
        """
        path = (STATE.meta or {}).get("file")
        if not path:
            return str(self._cache(transformed_code, number, raw_code))
        lines = transformed_code.splitlines(keepends=True)
        linecache.cache[path] = (len(transformed_code), None, lines, path)
        return str(path)

    def compute_format_data(self, result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data, md = self._format(result)
        if STATE.meta is not None:
            ok, value = json_value(result)
            if ok:
                data = dict(data)
                data["application/json"] = value
            STATE.binary = result if not ok and _wire.has_binary(result) else None
        return data, md

    def pre_run_cell(self, info: Any) -> None:
        cell_meta = getattr(info, "cell_meta", None)
        if cell_meta is None:  # ipykernel < 7 does not pass it on: read it from the request
            cell_meta = (getattr(self.shell, "parent_header", None) or {}).get("metadata")
        meta = (cell_meta or {}).get(META_KEY)
        STATE.meta = meta if isinstance(meta, dict) else None
        if STATE.meta is None:
            return
        ns = self.shell.user_ns
        if STATE.meta.get("isolate"):
            self.reset_namespace()
        else:
            ns.setdefault("attest", attest)
        # Bytes and arrays come as base64 placeholders (bridge.core.validate.check_inputs).
        inputs = _wire.decode(STATE.meta.get("inputs") or {}, [])
        STATE.injected = dict(inputs)
        ns.update(inputs)
        path = STATE.meta.get("file")
        if path:
            ns["__file__"] = path
        _Return.slot = None

    def post_run_cell(self, result: Any) -> None:
        meta, STATE.meta = STATE.meta, None
        if meta is None:
            return
        try:
            if meta.get("capture_variables"):
                send_record(VARIABLES, {"variables": _captured_variables(self.shell.user_ns)})
            if not STATE.in_run and STATE.binary is not None:  # no reply of ours to carry it
                binary, STATE.binary = STATE.binary, None
                try:
                    value, buffers = _wire.encode(binary)
                except (TypeError, ValueError):
                    pass
                else:
                    send_record(BINARY, {"value": value}, buffers)
        finally:
            if meta.get("isolate"):
                self.reset_namespace()  # free what the call made now, not at the next call
            STATE.injected = {}

    def run(self, code: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Run one bridge call as IPython runs a cell; the reply says how it ended."""
        from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult

        shell = self.shell
        info = ExecutionInfo(code, False, False, True, None, cell_meta={META_KEY: meta})
        result = ExecutionResult(info)
        shell._last_traceback = None
        self.pre_run_cell(info)
        shell.events.trigger("pre_execute")
        # As do_execute does: input() asks the kernel's stdin channel, which a bridge call
        # does not allow, so it raises StdinNotImplementedError instead of reading EOF.
        kernel = getattr(shell, "kernel", None)
        forward = getattr(kernel, "_forward_input", None)
        if forward is not None:
            forward(False)
        # The value rides in the reply instead of an execute_result message of its own: one
        # signed message fewer per call at both ends. ipykernel 7's displayhook takes hooks.
        # Only the last value shown is the value: one shown before it (an explicit
        # sys.displayhook call) is ordinary output, published once the next one comes, so
        # nothing is lost and the host's max_output counts it (after any output made between
        # the two, which was flushed first).
        kept: dict[str, Any] = {}
        held: list[dict[str, Any]] = []
        STATE.binary, STATE.reply_buffers, STATE.in_run = None, [], True
        displayhook = shell.displayhook

        def keep_value(msg: dict[str, Any]) -> None:
            if held:
                displayhook.session.send(displayhook.pub_socket, held[0], ident=displayhook.topic)
            held[:] = [msg]
            kept[REPLY_VALUE] = msg["content"]

        hooked = hasattr(displayhook, "register_hook")
        if hooked:
            displayhook.register_hook(keep_value)
        outcome = "error"
        try:
            outcome = self._run_cell(code, result)
        finally:
            if hooked:
                displayhook.unregister_hook(keep_value)
            if forward is not None:
                kernel._restore_input()
            shell.events.trigger("post_execute")
            if outcome == "fallback":  # nothing ran; the execute_request does it all again
                STATE.meta, STATE.injected = None, {}
            else:
                self.post_run_cell(result)
            STATE.in_run = False
        if outcome == "fallback":
            return {"fallback": True}
        _flush_streams()
        binary, STATE.binary = STATE.binary, None
        if binary is not None:
            try:
                kept[REPLY_BINARY], STATE.reply_buffers = _wire.encode(binary)
            except (TypeError, ValueError):
                pass  # not only bytes, arrays and JSON: its repr is the value, as before
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            return {"status": "ok", **kept}
        return {
            "status": "error",
            "ename": type(error).__name__,
            "evalue": str(error),
            "traceback": list(shell._last_traceback or []),
            **kept,
        }

    def _run_cell(self, code: str, result: Any) -> str:
        shell = self.shell
        try:
            cell = shell.transform_cell(code)
        except Exception as exc:
            shell.showtraceback()
            result.error_before_exec = exc
            return "error"
        with shell.builtin_trap, shell.display_trap:
            cell_name = shell.compile.cache(cell, shell.execution_count, raw_code=code)
            try:
                tree = shell.compile.ast_parse(cell, filename=cell_name)
            except IndentationError as exc:
                shell.showindentationerror()
                result.error_before_exec = exc
                return "error"
            except (OverflowError, SyntaxError, ValueError, TypeError, MemoryError) as exc:
                shell.showsyntaxerror()
                result.error_before_exec = exc
                return "error"
            tree = shell.transform_ast(tree)
            if _awaits_at_top_level(tree):
                return "fallback"
            shell.displayhook.exec_result = result
            _drive(
                shell.run_ast_nodes(
                    tree.body,
                    cell_name,
                    interactivity="last_expr",
                    compiler=shell.compile,
                    result=result,
                )
            )
        return "ok"

    def reset_namespace(self) -> None:
        ns = self.shell.user_ns
        ns.clear()
        ns.update(STATE.baseline)
        out = ns.get("_oh")
        if isinstance(out, dict):
            out.clear()
        hook = self.shell.displayhook
        hook._ = hook.__ = hook.___ = ""


_HOOKS: Hooks | None = None


def _on_comm_open(comm: Any, msg: Any) -> None:
    STATE.comm = comm
    comm.on_msg(_on_comm_msg)


def _on_comm_msg(msg: dict[str, Any]) -> None:
    data = msg["content"].get("data") or {}
    kind = data.get("kind")
    if kind == EXECUTE and _HOOKS is not None:
        try:
            reply = _HOOKS.run(str(data.get("code", "")), data.get("meta") or {})
        except BaseException as exc:  # every call gets a reply: the host must never wait in vain
            import traceback

            reply = {
                "status": "error",
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": traceback.format_exc().splitlines(),
            }
        buffers, STATE.reply_buffers = STATE.reply_buffers, []
        send_record(REPLY, reply, buffers)
    elif kind == PING:
        send_record(PONG, {"python": sys.version.split()[0], "pid": os.getpid()})


def _flush_then(exit_: Any) -> Any:
    def _exit(status: int) -> None:
        # os._exit skips every flush: without this, what a cell printed just before it
        # exits is lost in ipykernel's stream buffer. Flush, give IOPub a moment, then exit.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            import time

            time.sleep(0.05)
        finally:
            exit_(status)

    _exit.__wrapped__ = exit_  # type: ignore[attr-defined]
    return _exit


def install(shell: Any) -> None:
    """Install the call hooks into *shell* and listen for the host's comm."""
    if not hasattr(os._exit, "__wrapped__"):
        os._exit = _flush_then(os._exit)
    paths = [p for p in os.environ.get("KERNEL_BRIDGE_PYTHON_PATHS", "").split(os.pathsep) if p]
    for path in reversed(paths):  # the host's python_paths come first, ahead of the cwd
        while path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    for stream in (sys.stdout, sys.stderr):
        _skip_empty_flushes(stream)
    global _HOOKS
    _HOOKS = Hooks(shell)
    _HOOKS.install()
    import comm

    comm.get_comm_manager().register_target(EXECUTE_COMM, _on_comm_open)
