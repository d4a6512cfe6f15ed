"""AsyncBridge and AsyncSession: the one path every request takes to a kernel."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Mapping, Sequence
from types import TracebackType
from typing import Any, overload

from bridge.api import files as files_
from bridge.api import packages as packages_
from bridge.api.outputs import AttestCallback, Listener, OutputCallback, relayed
from bridge.backends.backend import AsyncBackend
from bridge.core.errors import BridgeClosed, ExecutionTimeout, InvalidRequest, KernelDied
from bridge.core.files import DEFAULT_MAX_SCRIPT, folder_inside, read_script
from bridge.core.kernel import Kernel
from bridge.core.limits import KernelLimits, enforcement
from bridge.core.metrics import OUTPUT_BYTES
from bridge.core.pool import Factory, KernelPool, PoolStatus
from bridge.core.python import resolve_python
from bridge.core.results import DEFAULT_MAX_OUTPUT, ExecutionResult
from bridge.core.transfers import FileChannel, FileDownload, FileInfo
from bridge.core.validate import (
    check_callable,
    check_code,
    check_count,
    check_env,
    check_inputs,
    check_timeout,
)
from bridge.transports.gateway.factory import GatewayFactory
from bridge.transports.gateway.settings import check_gateway_manager, gateway_settings
from bridge.transports.local.factory import KernelFactory
from bridge.transports.local.transport import ActivityHook as KernelActivity

Limits = KernelLimits | Mapping[str, Any]


def _request(
    code: object,
    *,
    mode: str,
    isolate: bool,
    inputs: Mapping[str, Any] | None = None,
    capture_variables: bool = False,
    file: str | None = None,
) -> tuple[str, dict[str, Any]]:
    text = check_code(code, "expr" if mode == "eval" else "code")
    meta: dict[str, Any] = {"mode": mode, "isolate": isolate}
    checked = check_inputs(inputs)
    if checked:
        meta["inputs"] = checked
    if capture_variables:
        meta["capture_variables"] = True
    if file is not None:
        meta["file"] = file
    return text, meta


def _gateway_options(
    options: dict[str, Any], url: str, token: str, kernel_name: str | None
) -> dict[str, Any]:
    """The GatewayFactory's arguments, refusing the options that only mean something locally."""
    if options["python"] is not None:
        raise InvalidRequest(
            "python= picks a local interpreter; on a gateway the kernel spec decides "
            "(gateway_kernel_name=)"
        )
    kernel_manager = options["kernel_manager"]
    if kernel_manager is not None:
        check_gateway_manager(kernel_manager, url)
    return {
        "url": url,
        "token": token,
        "kernel_name": kernel_name,
        "kernel_manager": kernel_manager,
        "env": options["env"],
        "python_paths": options["python_paths"],
        "startup_timeout": options["startup_timeout"],
    }  # no limits: a gateway's operator bounds its kernels


class _AsyncCalls:
    """execute, evaluate and execute_file, shared by AsyncBridge and AsyncSession.

    They differ only in where a prepared request runs: any free pool kernel in a fresh
    namespace (the bridge), or the session's own kernel and namespace.
    """

    _isolate: bool

    @property
    def _home(self) -> AsyncBridge:
        """The bridge whose timeout, output cap and ``on_attest`` the calls use."""
        raise NotImplementedError

    async def _submit(
        self,
        code: str,
        meta: dict[str, Any] | None,
        timeout: float | None,
        capture: bool,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        home = self._home
        seconds = check_timeout(timeout, home.timeout)
        # The callbacks drain after _run has let its kernel go (back to the pool, or the
        # session's next call): a callback may call the bridge, even the same session,
        # without waiting for the call it belongs to.
        return await relayed(
            lambda output, attest: self._run(code, meta, seconds, capture, output, attest),
            on_output=on_output,
            on_attest=home.on_attest,
        )

    async def _run(
        self,
        code: str,
        meta: dict[str, Any] | None,
        seconds: float,
        capture: bool,
        output: Listener | None,
        attest: Listener | None,
    ) -> ExecutionResult:
        """Run a prepared request where this object runs them, handing outputs to *output*."""
        raise NotImplementedError

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        capture_variables: bool = False,
        inputs: Mapping[str, Any] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run *code*; a top-level ``return X`` gives the value X.

        >>> r = await b.execute("import math\\nreturn {'pi': math.pi}")   # doctest: +SKIP
        >>> r.value                                                       # doctest: +SKIP
        {'pi': 3.141592653589793}

        *on_output* is called with each nbformat output dict as the kernel makes it, in
        order: a ``stream`` output per chunk of text, then ``display_data``,
        ``execute_result`` and ``error`` outputs whole. A plain function runs on the event
        loop (it must not block); a coroutine function is awaited in order without holding
        up the call's reading. The call returns once every callback is done; one that raises
        is logged and the call goes on.

        >>> await b.execute("print('a'); import time; time.sleep(1); print('b')",
        ...                 on_output=lambda o: print(o.get("text"), end=""))  # doctest: +SKIP
        """
        text, meta = _request(
            code,
            mode="exec",
            isolate=self._isolate,
            inputs=inputs,
            capture_variables=capture_variables,
        )
        return await self._submit(text, meta, timeout, capture_variables, on_output)

    async def evaluate(
        self,
        expr: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """The value of one expression: ``(await b.evaluate("1 + 2 * 3")).value == 7``
        (*on_output* as for ``execute``)."""
        text, meta = _request(expr, mode="eval", isolate=self._isolate)
        return await self._submit(text, meta, timeout, False, on_output)

    async def execute_file(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        capture_variables: bool = False,
        inputs: Mapping[str, Any] | None = None,
        root: str | os.PathLike[str] | None = None,
        max_size: int = DEFAULT_MAX_SCRIPT,
        on_output: OutputCallback | None = None,
    ) -> ExecutionResult:
        """Run the script at *path* (read by the host) as ``__main__`` with ``__file__`` set
        (*on_output* as for ``execute``).

        The file is opened once and checked as opened: a regular file of at most *max_size*
        bytes, inside *root* if one is given (``bridge.ScriptRefused`` otherwise); it is read
        in a thread, so a slow disk never stalls the event loop.

        >>> await b.execute_file("jobs/report.py", root="jobs")   # doctest: +SKIP
        """
        check_count(max_size, "max_size")
        source, resolved = await asyncio.to_thread(read_script, path, root=root, max_size=max_size)
        text, meta = _request(
            source,
            mode="exec",
            isolate=self._isolate,
            inputs=inputs,
            capture_variables=capture_variables,
            file=resolved,
        )
        return await self._submit(text, meta, timeout, capture_variables, on_output)


class AsyncBridge(_AsyncCalls):
    """A pool of warm IPython kernels that run Python for the host.

    >>> async with bridge.AsyncBridge(pool_size=2) as b:      # doctest: +SKIP
    ...     (await b.evaluate("1 + 2 * 3")).value
    7

    One-off calls (``execute``, ``evaluate``, ``execute_file``) run on any free kernel in a
    fresh namespace; ``session()`` keeps one kernel and its state for the caller.

    With ``gateway_url`` (or ``JUPYTER_GATEWAY_URL`` in the environment, with
    ``JUPYTER_GATEWAY_AUTH_TOKEN``) the kernels run on a Jupyter Kernel Gateway or Enterprise
    Gateway instead, started from its ``gateway_kernel_name`` spec (the gateway's default if
    None); ``gateway_url=""`` forces local kernels. ``env`` then goes in the kernel start
    request (gateways pass on ``KERNEL_*`` names and those their operator allows) and
    ``python_paths`` name directories on the gateway's host. ``kernel_manager`` may then only be
    Jupyter Server's ``GatewayMappingKernelManager`` for the same gateway: the bridge registers
    its kernels there, so the server lists them and JupyterLab opens them.

    Local kernels are forked from a fork server that has imported IPython and ipykernel once
    (about 0.1 of a kernel start); ``fork_server=False`` starts a new interpreter per kernel,
    as jupyter_client does by default (docs/kernels.md#fork-server).

    ``on_kernel_activity(kernel_id, msg_type, parent_msg_type, execution_state)`` hears every
    IOPub message of a local kernel, the bridge's calls and any other client's alike
    (``execution_state`` is a status message's, else None); it runs in the reader and must be
    quick. The HTTP service feeds Jupyter Server's activity tracking (culling, the busy
    indicator) from it instead of a second IOPub subscription per kernel.
    A session's files (``upload``, ``download``...) are limited to ``max_file_bytes`` each
    (default 1 GiB) and ``max_context_bytes`` for all a session has uploaded (default 4 GiB).

    *limits* bound what each local kernel may take (memory, CPU seconds, processes, open
    files, file size: ``bridge.KernelLimits``; a mapping changes the defaults' entries, a null
    entry lifts one); sessions and backends may ask for tighter ones (docs/kernels.md#limits).

    One-off calls wait for a free pool kernel in a queue of at most *max_waiting* calls
    (default 32 per pool kernel); beyond it a call raises ``bridge.Overloaded`` at once, with
    ``retry_after`` seconds. The wait counts against the call's timeout.
    """

    def __init__(
        self,
        *,
        pool_size: int = 2,
        python: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        timeout: float = 30.0,
        max_output: int = DEFAULT_MAX_OUTPUT,
        on_attest: AttestCallback | None = None,
        startup_timeout: float = 60.0,
        kernel_manager: Any = None,
        gateway_url: str | None = None,
        gateway_token: str | None = None,
        gateway_kernel_name: str | None = None,
        fork_server: bool = True,
        on_kernel_activity: KernelActivity | None = None,
        max_file_bytes: int = files_.DEFAULT_MAX_FILE,
        max_context_bytes: int = files_.DEFAULT_MAX_CONTEXT,
        limits: Limits | None = None,
        max_waiting: int | None = None,
    ) -> None:
        check_count(pool_size, "pool_size")
        self.limits = KernelLimits.of(limits)
        self.max_waiting = None if max_waiting is None else check_count(max_waiting, "max_waiting")
        if on_kernel_activity is not None:
            check_callable(on_kernel_activity, "on_kernel_activity")
        self.max_output = check_count(max_output, "max_output")
        self.max_file_bytes = check_count(max_file_bytes, "max_file_bytes")
        self.max_context_bytes = check_count(max_context_bytes, "max_context_bytes")
        self.timeout = check_timeout(timeout, 30.0)
        if on_attest is not None:
            check_callable(on_attest, "on_attest")
        self.on_attest = on_attest
        self._options: dict[str, Any] = {
            "python": python,
            "env": env,
            "python_paths": python_paths,
            "startup_timeout": check_timeout(startup_timeout, 60.0),
            "kernel_manager": kernel_manager,
            "fork_server": fork_server,
            "limits": self.limits,
            "on_activity": on_kernel_activity,
        }
        self.gateway_url, gateway_token = gateway_settings(gateway_url, gateway_token)
        if self.gateway_url:
            self._options = _gateway_options(
                self._options, self.gateway_url, gateway_token, gateway_kernel_name
            )
        self._pool_size = pool_size
        self._factory: Factory | None = None
        self._pool: KernelPool | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()
        self._install_lock = asyncio.Lock()  # one installer at a time in one environment
        self._backends: set[AsyncBackend] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncBridge:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the pool's kernels (``async with`` does this); idempotent."""
        async with self._start_lock:
            if self._closed:
                raise BridgeClosed("the bridge is closed")
            if self._pool is not None:
                return
            factory: Factory
            if self.gateway_url:
                factory = GatewayFactory(**self._options)
            else:
                factory = KernelFactory(**self._options)
            pool = KernelPool(factory, self._pool_size, max_waiting=self.max_waiting)
            try:
                await pool.start()
            except BaseException:
                await pool.close()
                raise
            if self._closed:  # aclose() came while the kernels were starting
                await pool.close()
                raise BridgeClosed("the bridge was closed while it was starting")
            self._factory, self._pool = factory, pool

    async def aclose(self) -> None:
        """Shut every kernel down with its process group and connection file; idempotent."""
        self._closed = True
        # Backends first: their kernels are the factory's, which the pool closes with it.
        await asyncio.gather(*(b.terminate() for b in list(self._backends)), return_exceptions=True)
        pool, self._pool = self._pool, None
        self._factory = None  # closed with the pool: nothing may use it from now on
        if pool is not None:
            await pool.close()

    def _not_running(self) -> BridgeClosed:
        return BridgeClosed("the bridge is closed" if self._closed else "the bridge is not started")

    @property
    def factory(self) -> Factory:
        if self._factory is None:
            raise self._not_running()
        return self._factory

    @property
    def pool(self) -> KernelPool:
        if self._pool is None:
            raise self._not_running()
        return self._pool

    @property
    def python(self) -> str:
        """The interpreter that runs the kernels (known before they start, unless on a
        gateway, whose kernel spec decides)."""
        if self._factory is None and not self.gateway_url and not self._closed:
            return resolve_python(self._options["python"])
        return self.factory.python

    def status(self) -> PoolStatus:
        """The pool's kernels now: ``b.status().ready`` live ones, ``busy``, ``starting``..."""
        return self.pool.status()

    def limits_in_force(self) -> dict[str, Any]:
        """What bounds each kernel, for a health check: the limits, and how they are enforced
        here (``mechanism``; ``processes`` and ``cgroup_v2`` say what rlimits cannot do).

        >>> b.limits_in_force()["limits"]["memory_mb"]           # doctest: +SKIP
        4096
        """
        if self.gateway_url:
            return {"limits": {}, "mechanism": "none: a gateway's operator bounds its kernels"}
        return {"limits": self.limits.as_dict(), **enforcement()}

    async def kernel_language(self, name: str) -> str | None:
        """The language of the kernel spec *name* where this bridge's kernels run; None if
        there is no kernel spec by that name.

        >>> await b.kernel_language("python3")                  # doctest: +SKIP
        'python'

        Locally that is the installed kernel specs (``jupyter kernelspec list``) and the
        bridge's own (``kernel-bridge``); on a gateway, the gateway's (``/api/kernelspecs``).
        Notebook testing asks it of a notebook whose kernel name does not say Python.
        """
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"a kernel spec name must be a non-empty string, got {name!r}")
        return await self.factory.kernel_language(name)

    @property
    def kernel_info(self) -> dict[str, Any]:
        """A pool kernel's ``kernel_info_reply`` content (``language_info``, versions); {} if
        no kernel is live."""
        for kernel in self.pool.kernels:
            if kernel.alive:
                return dict(kernel.kernel_info)
        return {}

    # -- one-off calls ---------------------------------------------------------------------------

    _isolate = True  # one-off calls: a fresh namespace each

    @property
    def _home(self) -> AsyncBridge:
        return self

    async def _run(
        self,
        code: str,
        meta: dict[str, Any] | None,
        seconds: float,
        capture: bool,
        output: Listener | None,
        attest: Listener | None,
    ) -> ExecutionResult:
        pool = self.pool
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            # The wait for a free kernel (all busy, or the only one being replaced) counts
            # against the call's timeout; a full queue refuses at once (Overloaded).
            async with asyncio.timeout(seconds):
                kernel = await pool.acquire()
        except TimeoutError:
            raise ExecutionTimeout(
                f"no kernel was free within the timeout of {seconds:g} s (all busy or starting); "
                "the code did not run",
                timeout=seconds,
                restarted=False,
                result=ExecutionResult(success=False, code=code),
            ) from None
        started = loop.time()
        left = max(seconds - (started - asked), 0.001)
        try:
            return await self.run_on(kernel, code, meta, left, capture, output, attest)
        except ExecutionTimeout as exc:
            raise exc.as_asked(seconds) from None
        finally:
            pool.record_call(loop.time() - started)
            pool.release(kernel)

    async def run_on(
        self,
        kernel: Kernel,
        code: str,
        meta: dict[str, Any] | None,
        timeout: float,
        capture: bool,
        output: Listener | None = None,
        attest: Listener | None = None,
    ) -> ExecutionResult:
        """Run one prepared request on *kernel* with this bridge's output cap, handing each
        output and record to the listeners (``_submit`` runs the callbacks behind them).

        ``meta=None`` runs *code* as a notebook cell (``Kernel.execute(as_cell=True)``).
        """
        result = await kernel.execute(
            code,
            timeout=timeout,
            meta=meta,
            max_output=self.max_output,
            on_attest=attest,
            capture_variables=capture,
            as_cell=meta is None,
            on_output=output,
        )
        OUTPUT_BYTES.inc(len(result.stdout) + len(result.stderr))
        return result

    # -- backends --------------------------------------------------------------------------------

    async def spawn(
        self,
        script: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        timeout: float | None = None,
        restart: bool = False,
        name: str | None = None,
        limits: Limits | None = None,
    ) -> AsyncBackend:
        """Run a backend script in a kernel of its own and return it, ready for calls.

        >>> backend = await b.spawn("kernels/examples/echo_backend.py")    # doctest: +SKIP
        >>> await backend.call("greet", {"name": "Alice"})                  # doctest: +SKIP
        {'message': 'Hello, Alice!', ...}

        *timeout* is the default for its calls and the limit for running the script;
        *restart* brings a dead kernel back with the script run again; *name* is what people
        see it as (default: the script's file name; the service's JupyterLab session is
        ``backends/<name>``); *limits* tighten the bridge's for its kernel. Raises
        ``BackendStartError`` if the script raises or never calls ``run()``.
        """
        if self._closed:
            raise BridgeClosed("the bridge is closed")
        seconds = check_timeout(timeout, self.timeout)
        kernel_limits = self._tighter(limits)
        source, path = await asyncio.to_thread(read_script, script)
        backend = AsyncBackend(
            self.factory,
            path,
            source=source,
            env=env,
            python_paths=python_paths,
            timeout=seconds,
            restart=restart,
            max_output=self.max_output,
            name=name,
            limits=kernel_limits,
        )
        self._backends.add(backend)
        backend.on_terminate(lambda: self._backends.discard(backend))
        try:
            await backend.start()
        except BaseException:
            self._backends.discard(backend)
            raise
        return backend

    # -- sessions --------------------------------------------------------------------------------

    def session(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        max_file_bytes: int | None = None,
        max_context_bytes: int | None = None,
        limits: Limits | None = None,
    ) -> AsyncSession:
        """One kernel kept for the caller, state and all, until the session closes.

        >>> async with b.session() as s:                        # doctest: +SKIP
        ...     await s.execute("x = 41")
        ...     (await s.evaluate("x + 1")).value
        42

        With *env* (more environment variables) or *cwd* (its working folder), the session
        gets a kernel started for it with those, instead of a warm one from the pool;
        ``restart()`` starts it again with the same. With *root*, *cwd* must be a folder
        inside it (``ScriptRefused`` otherwise), as a service checks what its clients ask for.
        *max_file_bytes* and *max_context_bytes* limit its files (default: the bridge's).
        With *limits* (tighter than the bridge's, ``InvalidRequest`` otherwise) it gets a
        kernel started with them: ``b.session(limits={"memory_mb": 256})``.
        """
        if cwd is not None and root is not None:
            cwd = folder_inside(root, cwd)
        return AsyncSession(
            self,
            env=env,
            cwd=cwd,
            max_file_bytes=max_file_bytes,
            max_context_bytes=max_context_bytes,
            limits=self._tighter(limits),
        )

    def _tighter(self, limits: Limits | None) -> KernelLimits | None:
        """A session's or backend's own limits (None: the bridge's)."""
        if limits is None:
            return None
        if self.gateway_url:
            raise InvalidRequest(
                "limits apply to local kernels; a gateway's kernels are bounded by its operator"
            )
        return self.limits.tighten(limits)

    # -- packages --------------------------------------------------------------------------------

    async def install(
        self,
        packages: Sequence[str],
        *,
        upgrade: bool = False,
        timeout: float | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> packages_.InstallResult:
        """Install *packages* into the kernels' Python; running kernels can import them at once.

        >>> r = await b.install(["requests>=2", "./mine-1.0-py3-none-any.whl"])  # doctest: +SKIP
        >>> r.success, r.installed                                               # doctest: +SKIP
        (True, ['requests', 'mine'])

        Runs ``uv pip install --python PYTHON`` when uv is on PATH, else ``PYTHON -m pip
        install``. Each entry is a requirement (no URL, no option) or a local wheel, sdist or
        project folder (relative paths are read from *root*, default the current folder, and
        must lie inside it when *root* is given). A failed install is ``success=False`` with
        the installer's output. Raises ``PackageConflict`` if the kernels share this process's
        environment and the install would change a distribution kernel-bridge runs on,
        ``InstallTimeout`` past *timeout* (default 300 s), ``InvalidRequest`` on a gateway
        (its image decides what is installed). Every live kernel of the bridge (the pool's,
        sessions', backends') invalidates its import caches afterwards.
        """
        if self._closed:
            raise BridgeClosed("the bridge is closed")
        if self.gateway_url:
            raise InvalidRequest(
                "packages cannot be installed on a gateway's kernels: the gateway's image "
                "decides what they can import"
            )
        seconds = check_timeout(timeout, packages_.DEFAULT_TIMEOUT)
        async with self._install_lock:
            result = await packages_.install(
                self.python,
                packages,
                upgrade=upgrade,
                timeout=seconds,
                root=None if root is None else os.fspath(root),
            )
        if result.success and self._factory is not None:
            for kernel in list(self._factory.kernels):
                kernel.invalidate_import_caches()
        return result


class AsyncSession(_AsyncCalls):
    """A kernel of the caller's own: state carries from call to call.

    If the kernel dies, or a timeout needs it restarted, its state is gone: every later call
    raises ``KernelDied`` until ``restart()``, so state is never lost without a word.
    """

    def __init__(
        self,
        bridge: AsyncBridge,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_file_bytes: int | None = None,
        max_context_bytes: int | None = None,
        limits: KernelLimits | None = None,
    ) -> None:
        self._bridge = bridge
        self.env = check_env(env)
        self.limits = limits  # None: the bridge's, and a warm kernel
        self.max_file_bytes = (
            bridge.max_file_bytes
            if max_file_bytes is None
            else check_count(max_file_bytes, "max_file_bytes")
        )
        self.max_context_bytes = (
            bridge.max_context_bytes
            if max_context_bytes is None
            else check_count(max_context_bytes, "max_context_bytes")
        )
        self.cwd = None if cwd is None else os.fspath(cwd)
        if self.cwd is not None and not bridge.gateway_url and not os.path.isdir(self.cwd):
            raise InvalidRequest(f"cwd {self.cwd!r} is not a folder")
        self._kernel: Kernel | None = None
        self._lost: str | None = None
        self._closed = False
        self._lock = asyncio.Lock()  # one call at a time
        # One start or restart at a time: two at once would each take a kernel and keep one.
        # aclose() does not wait for it: it marks the session closed, and a start that ends
        # after that shuts the kernel it took down.
        self._life = asyncio.Lock()
        self._files: FileChannel | None = None

    async def __aenter__(self) -> AsyncSession:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        async with self._life:
            await self._start()

    async def _start(self) -> None:
        if self._closed:
            raise BridgeClosed("the session is closed")
        if self._kernel is None:
            own = bool(self.env) or self.cwd is not None or self.limits is not None
            pool = self._bridge.pool
            kernel = await (
                pool.take(env=self.env, cwd=self.cwd, limits=self.limits) if own else pool.take()
            )
            if self._closed:  # closed while its kernel started: no one else will stop it
                await pool.retire(kernel)
                raise BridgeClosed("the session was closed while its kernel started")
            self._kernel = kernel
            self._lost = None

    @property
    def kernel(self) -> Kernel:
        if self._closed:
            raise BridgeClosed("the session is closed")
        if self._kernel is None:
            raise BridgeClosed("the session is not started: use `async with b.session() as s`")
        return self._kernel

    @property
    def kernel_id(self) -> str:
        return self.kernel.kernel_id

    @property
    def connection_file(self) -> str:
        """For ``jupyter console --existing FILE``: look at the session's state by hand."""
        return self.kernel.connection_file

    @property
    def kernel_info(self) -> dict[str, Any]:
        """The session kernel's ``kernel_info_reply`` content (``language_info``, versions)."""
        return dict(self.kernel.kernel_info)

    async def restart(self) -> None:
        """Replace the kernel with a fresh one from the pool: an empty namespace, alive again.

        Restarts of one session run one after the other; calls made meanwhile wait for it."""
        async with self._life:
            if self._closed:
                raise BridgeClosed("the session is closed")
            old, self._kernel = self._kernel, None
            if old is not None:
                await self._bridge.pool.retire(old)
            await self._start()

    async def aclose(self, *, wait: bool = True) -> None:
        """Shut the session's kernel down; idempotent.

        With ``wait=False`` this returns at once and the kernel shuts down in the background
        (a polite shutdown takes a tenth of a second); the bridge's close waits for it. A
        runner of many short sessions (notebooks as tests) moves on meanwhile.
        """
        self._closed = True
        kernel, self._kernel = self._kernel, None
        if kernel is not None and self._bridge._pool is not None:
            await self._bridge.pool.retire(kernel, wait=wait)

    async def run_cell(self, source: str, *, timeout: float | None = None) -> ExecutionResult:
        """Run a notebook cell as a notebook front end does: plain IPython, no bridge options.

        The value is not turned into JSON and the cell counts in the execution count, so
        ``result.outputs`` is what Jupyter would store in the notebook.
        """
        return await self._submit(check_code(source, "source"), None, timeout, False)

    _isolate = False  # the session's own namespace, kept from call to call

    def _check_alive(self, kernel: Kernel) -> None:
        if self._lost is not None or not kernel.alive:
            raise KernelDied(
                f"the session's kernel is gone ({self._lost or kernel.exit_status}); "
                "its state is lost: call restart()",
                status=kernel.exit_status,
                reason=kernel.death_reason,
            )

    @property
    def alive(self) -> bool:
        """Whether the next call can run: started, not closed, its kernel and state intact."""
        kernel = self._kernel
        return not self._closed and kernel is not None and kernel.alive and self._lost is None

    @property
    def busy(self) -> bool:
        """A call is running (or waiting for the one before it)."""
        return self._lock.locked()

    @property
    def _home(self) -> AsyncBridge:
        return self._bridge

    async def _run(
        self,
        code: str,
        meta: dict[str, Any] | None,
        seconds: float,
        capture: bool,
        output: Listener | None,
        attest: Listener | None,
    ) -> ExecutionResult:
        async with self._lock:  # one call at a time: a timeout interrupts only its own call
            if self._kernel is None and self._life.locked():
                async with self._life:  # a restart is under way: the call runs after it
                    pass
            kernel = self.kernel
            await kernel.settle()  # a cancelled call before this one may still be stopping
            self._check_alive(kernel)
            try:
                return await self._bridge.run_on(
                    kernel, code, meta, seconds, capture, output, attest
                )
            except ExecutionTimeout as exc:
                if exc.restarted:
                    self._lost = "killed after a timeout"
                raise
            except KernelDied as exc:
                self._lost = str(exc.status)
                raise

    # -- files -----------------------------------------------------------------------------------

    def _file_channel(self) -> FileChannel:
        kernel = self.kernel
        self._check_alive(kernel)
        if self._files is None or self._files.kernel is not kernel:
            self._files = FileChannel(kernel)
        return self._files

    async def upload(
        self,
        source: bytes | bytearray | memoryview | str | os.PathLike[str] | AsyncIterable[bytes],
        path: str,
        *,
        size: int | None = None,
        timeout: float | None = None,
    ) -> FileInfo:
        """Write *source* to *path* in the kernel's working folder; its FileInfo.

        >>> await s.upload(b"a,b\\n1,2\\n", "data/in.csv")         # doctest: +SKIP
        >>> await s.upload("local/report.pdf", "report.pdf")       # doctest: +SKIP

        *source* is the content (bytes), a local file's path (str or PathLike, read in a
        thread) or an async iterable of byte chunks (*size*, if known, refuses a file too
        large before any byte travels). The bytes go through the kernel's own channels, so
        a gateway's kernel gets them the same way; folders on the way are made. The file
        appears whole or not at all. Refused (``FileRefused``): a path out of the folder
        (absolute, ``..``, through a symlink), past ``max_file_bytes`` or, with the session's
        other uploads still there, ``max_context_bytes`` (``too_large``). *timeout* bounds
        each wait for the kernel (one busy running code serves the upload after it); default
        the bridge's.
        """
        target = files_.check_path(path)
        seconds = check_timeout(timeout, self._bridge.timeout)
        chunks, known = await files_.source_chunks(source, size)
        return await self._file_channel().upload(
            target,
            chunks,
            size=known,
            max_file=self.max_file_bytes,
            max_total=self.max_context_bytes,
            timeout=seconds,
        )

    def download_stream(self, path: str, *, timeout: float | None = None) -> FileDownload:
        """The file at *path* in the kernel's working folder, streamed chunk by chunk.

        >>> async with s.download_stream("out.png") as d:    # doctest: +SKIP
        ...     d.info.size
        ...     async for chunk in d:
        ...         sink.write(chunk)
        """
        target = files_.check_path(path)
        seconds = check_timeout(timeout, self._bridge.timeout)
        return self._file_channel().download(target, max_file=self.max_file_bytes, timeout=seconds)

    @overload
    async def download(
        self, path: str, dest: None = None, *, timeout: float | None = None
    ) -> bytes: ...

    @overload
    async def download(
        self, path: str, dest: str | os.PathLike[str], *, timeout: float | None = None
    ) -> FileInfo: ...

    async def download(
        self,
        path: str,
        dest: str | os.PathLike[str] | None = None,
        *,
        timeout: float | None = None,
    ) -> bytes | FileInfo:
        """The file at *path* in the kernel's working folder: its bytes, or with *dest* (a
        local path) written there, streamed, whole or not at all, and its FileInfo.

        >>> png = await s.download("out.png")                     # doctest: +SKIP
        >>> await s.download("model.pt", "/tmp/model.pt")          # doctest: +SKIP
        """
        async with self.download_stream(path, timeout=timeout) as stream:
            if dest is None:
                return await stream.read()
            await files_.save(stream, dest)
            assert stream.info is not None
            return stream.info

    async def list_files(self, path: str = ".", *, timeout: float | None = None) -> list[FileInfo]:
        """What the folder *path* (relative to the working folder) holds, by name; symlinks
        are listed as such, never followed; at most 10,000 entries."""
        target = files_.check_path(path)
        seconds = check_timeout(timeout, self._bridge.timeout)
        return await self._file_channel().list(target, timeout=seconds)

    async def remove(self, path: str, *, timeout: float | None = None) -> None:
        """Remove the file (or empty folder, or symlink itself) at *path*."""
        target = files_.check_path(path)
        seconds = check_timeout(timeout, self._bridge.timeout)
        await self._file_channel().remove(target, timeout=seconds)
