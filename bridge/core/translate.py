"""Lower libraries' errors turned into the BridgeError tree: one context manager per library.

ZeroMQ (the kernel's sockets) and jupyter_client (launch, signals, sessions) are the core's and
the local transport's lower libraries; tornado's errors are mapped in
``bridge/transports/gateway/errors.py``, and the service layer maps BridgeErrors to answers in
``bridge/service/errors.py``. Only what those libraries raise is translated: a bug of ours
(an AttributeError, a RuntimeError of our own) passes through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType

import zmq

from bridge.core.errors import BridgeError


def _raised_in(tb: TracebackType | None, package: str) -> bool:
    """Whether the innermost frame of *tb* is *package*'s code."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    module = str(last.tb_frame.f_globals.get("__name__", ""))
    return module == package or module.startswith(package + ".")


def _os_detail(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)


@contextlib.contextmanager
def zmq_errors(what: str, error: type[BridgeError] = BridgeError) -> Iterator[None]:
    """A ZeroMQ call that failed (a closed socket, a full queue): *error* saying *what*."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise error(f"{what}: ZeroMQ: {exc}") from exc


@contextlib.contextmanager
def jupyter_client_errors(what: str, error: type[BridgeError] = BridgeError) -> Iterator[None]:
    """jupyter_client (and the ZeroMQ and OS calls it makes for us) failed while doing *what*.

    >>> with jupyter_client_errors("starting a kernel", KernelStartError):  # doctest: +SKIP
    ...     raise FileNotFoundError(2, "No such file", "/no/python")
    Traceback (most recent call last):
    bridge.KernelStartError: starting a kernel: /no/python: No such file
    """
    try:
        yield
    except BridgeError:
        raise
    except zmq.ZMQError as exc:
        raise error(f"{what}: ZeroMQ: {exc}") from exc
    except OSError as exc:  # launching: no such interpreter, no permission, too many files
        raise error(f"{what}: {_os_detail(exc)}") from exc
    except Exception as exc:
        # jupyter_client's own exception types, and the RuntimeErrors it raises ("Kernel died
        # before replying to kernel_info"); anything raised elsewhere is a bug and stays one.
        ours = type(exc).__module__.split(".")[0] == "jupyter_client"
        if ours or (
            isinstance(exc, RuntimeError) and _raised_in(exc.__traceback__, "jupyter_client")
        ):
            raise error(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise
