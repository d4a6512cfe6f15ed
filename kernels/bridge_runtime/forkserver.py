"""A fork server: a process per interpreter that has imported what kernels import, forking them.

Started by the host's kernel provisioner (``bridge/transports/local/provisioner.py``) as
``python -m bridge_runtime.forkserver FD`` with FD one end of a Unix SOCK_SEQPACKET socket pair.
It imports what every IPython kernel imports (IPython, ipykernel, zmq, this runtime), which is
most of a kernel's start-up, with no thread and no ZeroMQ context alive, and then waits. For
each kernel the host sends::

    {"op": "fork", "id": n, "argv": [python, "-m", module, *args], "env": {...}, "cwd": "...",
     "deadline": t}

with the kernel's stdout and stderr as SCM_RIGHTS descriptors. The server forks; the child
applies what is per kernel (a new session and process group, stdio, cwd, environment,
``sys.path`` from its PYTHONPATH, reseeded random state, default signal handlers, argv) and runs
the module as ``python -m`` would. The server answers ``{"id": n, "pid": p}`` with a pidfd of
the child (so the host signals and watches that very process), or ``{"id": n, "fallback":
reason}`` when a fork cannot give the kernel an ordinary launch would (its PYTHONPATH shadows a
module the server has imported), or ``{"id": n, "error": ...}`` without forking when the
request's deadline (CLOCK_MONOTONIC seconds) has passed: the host has given up on it and may
have launched that kernel another way, on the same ports. It reaps its children and reports
each exit as ``{"exit": p, "status": waitstatus}``. Each forked kernel writes its own command
line over the server's (``ps`` shows it as a launched kernel: its module, its connection
file), in room the host's blank last argument makes. It exits when the host's end closes
(the host exited or died).

Standard library only, like the rest of the kernel side: it runs in the kernel's interpreter.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

MAX_MESSAGE = 4 * 1024 * 1024  # the largest request: argv, environment and paths
# What every IPython kernel imports on its way up: importing it here, once, is the saving.
PRELOAD = (
    "zmq",
    "tornado.ioloop",
    "traitlets",
    "jupyter_client.session",
    "IPython",
    "IPython.core.interactiveshell",
    "IPython.core.completer",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "pdb",
    "faulthandler",
    "unicodedata",
    "tornado.gen",
    "tornado.locks",
    "tornado.queues",
    "tornado.platform.asyncio",
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.iostream",
    "ipykernel.comm",
    "comm",
    "bridge_runtime",
    "bridge_runtime.launch",
    "bridge_runtime._backend",
    "bridge_runtime._execute",
    "bridge_runtime._files",
)


def _set_title(title: str) -> bool:
    """Make ``ps`` and /proc/PID/cmdline show *title* (arguments separated by NULs): written over
    this process's original argument area, whose bounds /proc/self/stat gives (Linux >= 3.5),
    as setproctitle does. Truncated to that area; False where it cannot be done."""
    try:
        import ctypes

        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        room = end - start
        if room <= 1:
            return False
        data = title.encode(errors="replace")[: room - 1]
        ctypes.memmove(start, data + b"\0" * (room - len(data)), room)
        return True
    except (OSError, ValueError, IndexError, ImportError):
        return False


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _preload() -> list[str]:
    """Import PRELOAD; return what could not be imported (an old ipykernel lacks a module)."""
    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if threading.active_count() != 1:
        raise RuntimeError("a preloaded module started a thread: forked kernels would lack it")
    return missing


def _top_level_names() -> dict[str, str]:
    """Top-level modules imported here -> the folder they were found in (the shadowing check)."""
    found = {}
    for name, module in list(sys.modules.items()):
        if "." in name or module is None:
            continue
        path = getattr(module, "__file__", None)
        if not path:
            continue
        if os.path.basename(path).startswith("__init__."):
            path = os.path.dirname(path)
        found[name] = os.path.dirname(os.path.abspath(path))
    return found


def _module_name(entry: str) -> str:
    for suffix in (".py", ".pyc"):
        if entry.endswith(suffix):
            return entry[: -len(suffix)]
    if ".cpython-" in entry or entry.endswith(".so"):
        return entry.split(".", 1)[0]
    return entry


def _shadowing(paths: list[str], imported: dict[str, str]) -> str | None:
    """The first module of *paths* (a kernel's PYTHONPATH) that would hide one imported here."""
    for folder in paths:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        here = os.path.abspath(folder)
        for entry in entries:
            name = _module_name(entry)
            origin = imported.get(name)
            if origin is not None and origin != here:
                return f"{os.path.join(folder, entry)} would shadow the preloaded {name}"
    return None


def _refresh_import_time_env(env: dict[str, str]) -> None:
    """Re-read what a preloaded module read from the environment when it was imported.

    ipykernel reads JPY_PARENT_PID into a trait default at import: without this, a forked
    kernel would not watch its parent, and would print the note of a kernel started by hand.
    """
    kernelapp = sys.modules.get("ipykernel.kernelapp")
    app = getattr(kernelapp, "IPKernelApp", None)
    if app is not None:
        trait = app.class_traits().get("parent_handle")
        if trait is not None:
            trait.default_value = int(env.get("JPY_PARENT_PID") or 0)


class Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.children: set[int] = set()
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        # sys.path as a kernel started by `python -m` gets it: [cwd, *PYTHONPATH, *the rest];
        # the rest is this interpreter's own (stdlib, site-packages, .pth additions).
        own = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.base_path = [p for p in sys.path[1:] if p not in own]
        self.imported: dict[str, str] = {}
        self.selector: selectors.BaseSelector | None = None

    def serve(self) -> None:
        if len(sys.argv) > 2:  # the host's blank room for kernels' titles: not shown for us
            _set_title("\0".join(getattr(sys, "orig_argv", sys.argv)[:-1]))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's Ctrl-C is the host's
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wakeup_w)
        try:
            missing = _preload()
        except BaseException:
            _send(self.sock, {"error": traceback.format_exc()})
            return
        self.imported = _top_level_names()
        # Objects that exist now live as long as the server: out of the collector's sight, so
        # that a child's collections do not touch (and copy, page by page) the whole heap.
        gc.collect()
        gc.freeze()
        _send(
            self.sock,
            {"ready": True, "pid": os.getpid(), "executable": sys.executable, "missing": missing},
        )
        self.selector = selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "host")
        selector.register(self.wakeup_r, selectors.EVENT_READ, "child")
        while True:
            for key, _ in selector.select():
                if key.data == "child":
                    self._drain_wakeups()
                    self._reap()
                    continue
                try:
                    data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 8)
                except InterruptedError:
                    continue
                except OSError:
                    data, fds = b"", []
                if not data:
                    return  # the host is gone: our children notice through ipykernel's poller
                try:
                    self._handle(json.loads(data), fds)
                finally:
                    for fd in fds:
                        os.close(fd)
            self._reap()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            try:
                _send(self.sock, {"exit": pid, "status": status})
            except OSError:
                return  # the host is gone; the loop ends on its end-of-file

    def _handle(self, request: dict[str, Any], fds: list[int]) -> None:
        rid = request.get("id")
        deadline = request.get("deadline")
        if deadline is not None and time.clock_gettime(time.CLOCK_MONOTONIC) > float(deadline):
            _send(self.sock, {"id": rid, "error": "the request's deadline has passed"})
            return
        try:
            env = dict(request["env"])
            paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            reason = _shadowing(paths, self.imported)
            if reason is not None:
                _send(self.sock, {"id": rid, "fallback": reason})
                return
            argv = [str(a) for a in request["argv"]]
            # Closed by the child once it is a group of its own: the host registers the pid
            # as the group's id with its watchdog the moment we answer.
            grouped_r, grouped_w = os.pipe()
            # A byte once the host has been sent the pid: a child whose server died before
            # (the host then launches that kernel another way, on the same ports) reads
            # end-of-file instead and never becomes a kernel.
            go_r, go_w = os.pipe()
            try:
                pid = os.fork()
            except BaseException:
                for fd in (grouped_r, grouped_w, go_r, go_w):
                    os.close(fd)
                raise
        except Exception as exc:
            _send(self.sock, {"id": rid, "error": f"{type(exc).__name__}: {exc}"})
            return
        if pid == 0:
            code = 1
            try:
                os.close(grouped_r)
                os.close(go_w)
                os.setsid()  # a process group of its own, as jupyter_client's start_new_session
                os.close(grouped_w)
                go = os.read(go_r, 1)
                os.close(go_r)
                if go:
                    code = self._child(argv, env, str(request["cwd"]), paths, fds, deadline)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.children.add(pid)
        os.close(grouped_w)
        os.close(go_r)
        try:
            os.read(grouped_r, 1)  # end-of-file: setsid() is done (or the child is gone)
        finally:
            os.close(grouped_r)
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pass
        try:
            _send(self.sock, {"id": rid, "pid": pid}, [pidfd] if pidfd >= 0 else None)
            os.write(go_w, b"g")
        finally:
            os.close(go_w)
            if pidfd >= 0:
                os.close(pidfd)

    def _child(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        paths: list[str],
        fds: list[int],
        deadline: float | None,
    ) -> int:
        """In the forked child (a group of its own already): become the kernel an ordinary
        launch would have started."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.sock.close()
        if self.selector is not None:
            self.selector.close()
        os.close(self.wakeup_r)
        os.close(self.wakeup_w)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        stdout, stderr = [*fds, -1, -1][:2]
        if stdout >= 0:
            os.dup2(stdout, 1)
        if stderr >= 0:
            os.dup2(stderr, 2)
        for fd in fds:
            os.close(fd)
        os.chdir(cwd)
        # The launcher's poller ends the kernel when its parent changes: its parent is us.
        env["JPY_PARENT_PID"] = str(os.getppid())
        os.environ.clear()
        os.environ.update(env)
        _refresh_import_time_env(env)
        sys.path[:] = [os.getcwd(), *paths, *self.base_path]
        from . import limits

        limits.apply(limits.from_env(env))  # before the kernel runs anything (limits.py)
        import random

        random.seed()  # also done by random's own at-fork hook; said here, not assumed
        if len(argv) < 3 or argv[1] != "-m":
            raise ValueError(f"not a `python -m module` command: {argv}")
        if deadline is not None and time.clock_gettime(time.CLOCK_MONOTONIC) > float(deadline):
            # The server was held up between its check and the fork: the host has given up
            # on this kernel and may be launching it another way on the same ports.
            print("kernel-bridge: a fork past its request's deadline; not started", file=sys.stderr)
            return 1
        import runpy

        # Imported here already: run it afresh as __main__, as `python -m` would, without
        # runpy's warning about a module found in sys.modules.
        sys.modules.pop(argv[2], None)
        sys.argv = [argv[2], *argv[3:]]
        # What `ps` shows for a launched kernel (its module, its connection file), not the
        # fork server's command line: operators tell kernels apart by it.
        _set_title("\0".join(argv))
        try:
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            code: Any = 0
        except SystemExit as exit_:
            code = exit_.code
        import atexit

        atexit._run_exitfuncs()  # what an interpreter's exit runs; os._exit skips it
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1


def main() -> None:
    fd = int(sys.argv[1])  # sys.argv[2], if any, is room for kernels' titles
    sock = socket.socket(fileno=fd)
    Server(sock).serve()


if __name__ == "__main__":
    main()
