"""Starting and stopping kernels: the kernel spec, jupyter_client's MultiKernelManager, the reaper.

Launch, restart and shutdown are jupyter_client's; this module only says which interpreter and
environment a kernel gets, and adds what a host needs on top: a ready handshake, a log file for
start-up failures, and the reaper that ends kernels whose host died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_dir_exists

from bridge.core.errors import KernelStartError
from bridge.core.kernel import Kernel
from bridge.core.limits import KernelLimits
from bridge.core.metrics import KERNEL_STARTS
from bridge.core.python import diagnose, resolve_python
from bridge.core.translate import jupyter_client_errors
from bridge.core.validate import check_env, check_paths
from bridge.core.wire import kernel_side_dir
from bridge.transports.local import forkserver, provisioner
from bridge.transports.local.transport import ActivityHook, LocalTransport
from bridge.transports.local.watchdog import Reaper, kill_group

log = logging.getLogger("bridge.kernel")

KERNEL_NAME = "kernel-bridge"
SHUTDOWN_WAIT = 2.0  # seconds a polite shutdown gets before SIGKILL (jupyter_client's is 5)
# The host's credentials for its own server: never part of a kernel's environment.
HOST_SECRETS = frozenset(
    {
        "JUPYTER_TOKEN",
        "JUPYTER_TOKEN_FILE",
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
        "JUPYTER_GATEWAY_AUTH_TOKEN",
    }
)


def bridge_kernel_spec(python: str, *, fork_server: bool = True) -> KernelSpec:
    """The kernel spec of a bridge kernel run by *python* (see kernels/kernelspec/kernel.json).

    With *fork_server* its kernels are forked from a pre-imported fork server; without,
    jupyter_client's LocalProvisioner starts each interpreter. Either way the provisioner
    (provisioner.py) reports the kernel's process the moment it exists, for the watchdog.
    """
    name = provisioner.FORK_NAME if fork_server else provisioner.WATCHED_NAME
    metadata: dict[str, Any] = {
        "debugger": False,
        "kernel_provisioner": {"provisioner_name": name, "config": {}},
    }
    return KernelSpec(
        argv=[python, "-m", "bridge_runtime.launch", "-f", "{connection_file}"],
        display_name="Python 3 (kernel-bridge)",
        language="python",
        interrupt_mode="signal",
        metadata=metadata,
    )


class BridgeSpecManager(KernelSpecManager):  # type: ignore[misc]
    """Knows the bridge kernel spec by name, and every installed spec as usual."""

    def __init__(self, spec: KernelSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bridge_spec = spec

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name == KERNEL_NAME:
            return self.bridge_spec
        return super().get_kernel_spec(kernel_name)

    def find_kernel_specs(self) -> dict[str, str]:
        specs: dict[str, str] = super().find_kernel_specs()
        specs[KERNEL_NAME] = str(kernel_side_dir() / "kernelspec")
        return specs


class KernelFactory:
    """Starts bridge kernels through one MultiKernelManager and stops them with everything they own.

    *kernel_manager* may be a manager someone else owns (Jupyter Server's), so its kernels are
    also the server's kernels.
    """

    def __init__(
        self,
        *,
        python: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        python_paths: Sequence[str | os.PathLike[str]] = (),
        startup_timeout: float = 60.0,
        kernel_manager: Any = None,
        fork_server: bool = True,
        limits: KernelLimits | None = None,
        on_activity: ActivityHook | None = None,
    ) -> None:
        self.python = resolve_python(python)
        self.limits = limits if limits is not None else KernelLimits()
        self.on_activity = on_activity  # hears every kernel's IOPub (transport.ActivityHook)
        self.env = check_env(env)
        self.python_paths = check_paths(python_paths)
        self.startup_timeout = startup_timeout
        self.fork_server = fork_server
        spec = bridge_kernel_spec(self.python, fork_server=fork_server)
        if kernel_manager is None:
            # Connection files (0600, with the key) go to Jupyter's private runtime folder
            # (0700), where `jupyter console --existing` looks; the default is the cwd.
            runtime_dir = jupyter_runtime_dir()
            ensure_dir_exists(runtime_dir, 0o700)
            kernel_manager = AsyncMultiKernelManager(
                kernel_spec_manager=BridgeSpecManager(spec), connection_dir=runtime_dir
            )
        else:
            _teach_spec(kernel_manager, spec)
        self.kernel_manager = kernel_manager
        self.context = zmq.asyncio.Context()
        self.context.setsockopt(zmq.RCVHWM, 0)  # never drop IOPub messages on our side either
        self.context.setsockopt(zmq.LINGER, 0)
        # The client connects as soon as the kernel process exists, before it has bound its
        # ports; ZeroMQ then retries after RECONNECT_IVL, 100 ms by default: most of a forked
        # kernel's start. 10 ms costs a few refused connects on loopback.
        self.context.setsockopt(zmq.RECONNECT_IVL, 10)
        self.reaper = Reaper()
        self.remote = False
        self.kernels: set[Kernel] = set()
        self._cleanups: set[asyncio.Future[None]] = set()  # the kernels of cancelled starts
        if fork_server:
            # Held until close(); started now, so it imports while the pool asks for kernels.
            forkserver.hold()
            forkserver.prestart(self.python, self.kernel_env())

    def kernel_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in HOST_SECRETS}
        paths = [*self.python_paths, str(kernel_side_dir())]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["KERNEL_BRIDGE_PYTHON_PATHS"] = os.pathsep.join(self.python_paths)
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # no debugger warnings on every start
        env.update(self.env)
        env.update(check_env(extra))
        return env

    async def start(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        limits: KernelLimits | None = None,
    ) -> Kernel:
        """Start a kernel and return it once it answers and its IOPub delivers.

        *limits* (at most the factory's: ``KernelLimits.tighten``) apply to it instead of the
        factory's own, in its process before it runs anything.
        """
        limits = limits if limits is not None else self.limits
        kernel_env = {**self.kernel_env(env), **limits.env()}
        asked = time.monotonic()
        fd, log_path = tempfile.mkstemp(prefix="kernel-bridge-", suffix=".log")
        kernel_id = str(uuid.uuid4())
        group: list[tuple[int, int | None]] = []  # (pgid, start time) once launched

        def on_launch(pgid: int, started: int | None, files: list[str]) -> None:
            # The moment the process exists (launched or forked): a host that dies from here
            # on leaves nothing.
            self.reaper.watch(pgid, started, [*files, log_path])
            group.append((pgid, started))

        provisioner.expect(kernel_id, on_launch)
        launch: asyncio.Future[str] | None = None
        abandoned = False
        try:
            with jupyter_client_errors(f"starting a kernel with {self.python}", KernelStartError):
                # A task of its own: a caller cancelled meanwhile (an HTTP client that went
                # away, a wait_for that gave up) would cancel jupyter_client's start half-way,
                # leaving a process and connection file that no one knows of.
                launch = asyncio.ensure_future(
                    self.kernel_manager.start_kernel(
                        kernel_name=KERNEL_NAME,
                        kernel_id=kernel_id,
                        env=kernel_env,
                        cwd=cwd or os.getcwd(),
                        stdout=fd,
                        stderr=fd,
                    )
                )
                await asyncio.shield(launch)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and launch is not None:
                # The launch goes on (it may still be waiting for the fork server, or about
                # to hand the log file to the kernel): the file is closed once it is over,
                # and the launch hook stays expected until then.
                abandoned = True
                cleanup = asyncio.ensure_future(
                    self._abandon(launch, kernel_id, group, fd, log_path)
                )
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                with contextlib.suppress(asyncio.CancelledError):  # cancelled again: it goes on
                    await asyncio.shield(cleanup)
            else:
                os.close(fd)
                os.unlink(log_path)
                for launched_group, _ in group:  # jupyter_client shut down what it launched
                    self.reaper.forget(launched_group)
            raise
        finally:
            if not abandoned:
                provisioner.unexpect(kernel_id)
        os.close(fd)  # the kernel holds its own copy
        manager = self.kernel_manager.get_kernel(kernel_id)
        manager.shutdown_wait_time = SHUTDOWN_WAIT
        # The Kernel watches its process and the pool replaces a dead kernel; a manager that
        # restarted it too (jupyter_client's and Jupyter Server's restarter) would fight that.
        manager.stop_restarter()
        manager.autorestart = False
        pgid: int | None = getattr(manager.provisioner, "pgid", None)
        started: int | None = None
        if group:
            pgid, started = group[0]
        elif pgid is not None:  # launched by a provisioner without the hook
            self.reaper.watch(pgid, None, [manager.connection_file, log_path])
        kernel = Kernel(
            LocalTransport(
                manager=manager,
                kernel_manager=self.kernel_manager,
                kernel_id=kernel_id,
                context=self.context,
                pgid=pgid,
                group_started=started,
                log_path=log_path,
                on_activity=self.on_activity,
            ),
            limits=limits,
        )
        if pgid is not None:
            # A dead kernel's group is ended by its transport at its death and forgotten here at
            # once: its id may be reused by a group that is not ours.
            kernel.on_exit(lambda _status: self.reaper.forget(pgid))
        self.kernels.add(kernel)
        try:
            await kernel.connect(self.startup_timeout)
        except BaseException as exc:
            exited = not kernel.alive
            detail = _tail(log_path)
            await self.stop(kernel, now=True)
            if isinstance(exc, KernelStartError):
                # Why did it exit? Ask the interpreter (a kernel that is merely slow would
                # make this slow too, and its log says more).
                hint = await asyncio.to_thread(diagnose, self.python) if exited else ""
                message = "; ".join(part for part in (str(exc), hint) if part)
                if detail and not hint:
                    message += f"\n--- kernel log ---\n{detail}"
                raise KernelStartError(message) from None
            raise
        path = "fork" if getattr(manager.provisioner, "forked", False) else "launch"
        KERNEL_STARTS.labels(path).observe(time.monotonic() - asked)
        log.debug("started %s (pid %s, %s)", kernel.name, kernel.pid, path)
        return kernel

    async def _abandon(
        self,
        launch: asyncio.Future[str],
        kernel_id: str,
        group: list[tuple[int, int | None]],
        fd: int,
        log_path: str,
    ) -> None:
        """start() was cancelled: let jupyter_client's start finish, then shut that kernel
        down with its process group, its connection file and its log."""
        try:
            try:
                async with asyncio.timeout(self.startup_timeout):
                    kernel_id = await asyncio.shield(launch)
            except TimeoutError:
                launch.cancel()
                log.warning(
                    "a cancelled kernel start did not end within %g s", self.startup_timeout
                )
                return
            except Exception:
                return  # it failed: jupyter_client cleaned up what it had started
            with contextlib.suppress(Exception):
                await self.kernel_manager.shutdown_kernel(kernel_id, now=True)
            log.debug("stopped kernel %s, whose start was cancelled", kernel_id[:8])
        finally:
            provisioner.unexpect(kernel_id)
            # Children the kernel started, if any are left, or a kernel whose launch never
            # ended: only while the group's leader is the one that was launched.
            for pgid, started in group:
                kill_group(pgid, signal.SIGKILL, started)
                self.reaper.forget(pgid)
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(log_path)

    async def stop(self, kernel: Kernel, *, now: bool = False) -> None:
        """Shut *kernel* down with its process group, connection file and log."""
        self.kernels.discard(kernel)
        transport = kernel.transport
        pgid = transport.pgid if isinstance(transport, LocalTransport) else None
        await kernel.shutdown(now=now)
        if pgid is not None:
            self.reaper.forget(pgid)

    async def kernel_language(self, name: str) -> str | None:
        """The language of the kernel spec *name* installed here (``jupyter kernelspec list``,
        the bridge's own included); None if none has that name."""
        with jupyter_client_errors(f"reading the kernel spec {name!r}"):
            try:
                spec = self.kernel_manager.kernel_spec_manager.get_kernel_spec(name)
            except NoSuchKernel:
                return None
        return str(spec.language)

    async def close(self) -> None:
        """Stop every kernel this factory started, then the reaper."""
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        await asyncio.gather(*(self.stop(k) for k in list(self.kernels)), return_exceptions=True)
        self.reaper.close()
        self.context.destroy(linger=0)
        if self.fork_server:
            self.fork_server = False  # released once, however often close() is called
            forkserver.release()


def _teach_spec(kernel_manager: Any, spec: KernelSpec) -> None:
    """Make a foreign MultiKernelManager (Jupyter Server's) know the bridge kernel spec."""
    ksm = kernel_manager.kernel_spec_manager
    original = ksm.get_kernel_spec
    if getattr(original, "_bridge", False):
        return

    def get_kernel_spec(kernel_name: str) -> KernelSpec:
        if kernel_name == KERNEL_NAME:
            return spec
        found: KernelSpec = original(kernel_name)
        return found

    get_kernel_spec._bridge = True  # type: ignore[attr-defined]
    ksm.get_kernel_spec = get_kernel_spec


def _tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text[-limit:].strip()
