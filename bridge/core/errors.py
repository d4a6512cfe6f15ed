"""The one exception tree: every error kernel-bridge raises is a BridgeError.

Lower libraries' errors are translated where they are called (the adapter), never by a blanket
catch: ``bridge/core/translate.py`` (ZeroMQ, jupyter_client), ``bridge/core/python.py``
(subprocess), ``bridge/core/validate.py`` (reading a caller's file),
``bridge/transports/gateway/errors.py`` (tornado), ``bridge/notebooks/reading.py`` (nbformat).
This module defines the tree and nothing else.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.core.results import ExecutionResult


class BridgeError(Exception):
    """Base of every error kernel-bridge raises."""


class InvalidRequest(BridgeError, ValueError):
    """The caller's arguments are wrong: bad inputs, a missing file, a non-JSON value."""


class PathRefused(InvalidRequest):
    """A path the bridge will not read or write; ``reason`` says why, one of ``not_found``,
    ``forbidden`` (outside the allowed folder, or through a symlink), ``too_large`` and
    ``bad_request``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ScriptRefused(PathRefused):
    """execute_file cannot run this path (``reason`` as for PathRefused)."""


class FileRefused(PathRefused):
    """A file in a context's working folder cannot be uploaded, downloaded, listed or
    removed (``reason`` as for PathRefused; ``too_large`` past a size limit)."""


class BridgeClosed(BridgeError):
    """The bridge, session or backend was closed before or during the call."""


class KernelStartError(BridgeError):
    """A kernel did not start: no such interpreter, no ipykernel, a crash during start-up."""


@dataclass(frozen=True)
class ExitStatus:
    """How a kernel process ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int | None) -> ExitStatus:
        if returncode is not None and returncode < 0:
            return cls(signal=-returncode)
        return cls(code=returncode)

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by signal {name}"
        if self.code is None:
            return "exit status unknown"
        return f"exit code {self.code}"


class KernelDied(BridgeError):
    """The kernel died during the call (or before it). Carries the output produced before death.

    ``reason`` names the limit it ran into when that is what ended it (``"cpu limit 10 s"``,
    ``"memory limit 256 MB"``), else None.
    """

    def __init__(
        self,
        message: str,
        *,
        status: ExitStatus | None = None,
        result: ExecutionResult | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status or ExitStatus()
        self.result = result
        self.reason = reason

    @property
    def exit_code(self) -> int | None:
        return self.status.code

    @property
    def signal(self) -> int | None:
        return self.status.signal


class Overloaded(BridgeError):
    """Every pool kernel is busy and the wait queue is full: the call was not run. Try again
    after ``retry_after`` seconds (the service answers 503 with ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExecutionTimeout(BridgeError, TimeoutError):
    """The call ran past its timeout. ``restarted`` says whether an interrupt was enough.

    ``result`` holds the output produced so far.
    """

    def __init__(self, message: str, *, timeout: float, restarted: bool, result: ExecutionResult):
        super().__init__(message)
        self.timeout = timeout
        self.restarted = restarted
        self.result = result

    def as_asked(self, asked: float) -> ExecutionTimeout:
        """The same timeout told as the caller gave it: a call that waited for a kernel ran
        with what was left of *asked* seconds, and its message names *asked*."""
        said = str(self).replace(f"timeout of {self.timeout:g} s", f"timeout of {asked:g} s", 1)
        told = ExecutionTimeout(said, timeout=asked, restarted=self.restarted, result=self.result)
        return told


class ExecutionError(BridgeError):
    """The executed code raised; raised by ``ExecutionResult.raise_for_error()``.

    The message shows the code, the output it made and the traceback, as nbclient's
    CellExecutionError does.
    """

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result
        err = result.error
        self.ename = err.ename if err else ""
        self.evalue = err.evalue if err else ""
        self.traceback = err.traceback if err else ""
        super().__init__(_describe_failure(result))


class InvalidNotebook(InvalidRequest):
    """A notebook cannot be run: not readable as a notebook, or it needs a kernel the bridge
    cannot provide (another language, a kernel spec that is not installed)."""


class NotebookFailed(BridgeError):
    """A notebook run as a test failed: a cell raised, ran past its timeout, killed its kernel,
    or made outputs that differ from the stored ones. The message is the full report.

    ``result`` is the ``NotebookResult`` with every detail.
    """

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class BackendError(BridgeError):
    """A backend method raised: ``ename``, ``evalue`` and the full ``traceback`` from the kernel.

    Also raised for an unknown method or wrong parameters (``AttributeError`` or ``TypeError``
    named in ``ename``, the method's signature in ``evalue``).
    """

    def __init__(self, method: str, ename: str, evalue: str, traceback: str) -> None:
        self.method = method
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        message = f"{method}() raised {ename}: {evalue}"
        if traceback.strip():
            message += "\n" + traceback.rstrip("\n")
        super().__init__(message)


class BackendStartError(BridgeError):
    """A backend did not start: its script raised (``ename``, ``evalue`` and ``traceback``
    hold it), never called ``run()``, or its kernel did not start."""

    def __init__(
        self, message: str, *, ename: str = "", evalue: str = "", traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback


class BackendLost(BridgeError):
    """The backend's connection was closed in its kernel (by code run there, say from an
    attached JupyterLab) while the kernel lives on; ``restart()`` starts the script anew."""


class CallTimeout(BridgeError, TimeoutError):
    """A backend call ran past its timeout (the method was interrupted in the kernel), or a
    file transfer made no progress within its timeout (the kernel dropped it)."""

    def __init__(self, message: str, *, method: str, timeout: float) -> None:
        super().__init__(message)
        self.method = method
        self.timeout = timeout


class PackageConflict(BridgeError):
    """An install was refused: it would change a distribution the host itself runs on
    (kernel-bridge and what it requires), which the kernels share. ``conflicts`` names them."""

    def __init__(self, message: str, *, conflicts: list[str]) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class InstallTimeout(BridgeError, TimeoutError):
    """The installer ran past its timeout and was killed."""

    def __init__(self, message: str, *, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


def _describe_failure(result: ExecutionResult) -> str:
    rule = "-" * 18
    parts = ["An error occurred while executing the following code:", rule, result.code, rule]
    if result.stdout:
        parts += ["", "stdout:", result.stdout.rstrip("\n")]
    if result.stderr:
        parts += ["", "stderr:", result.stderr.rstrip("\n")]
    if result.error is not None:
        parts += ["", result.error.traceback.rstrip("\n")]
        tail = f"{result.error.ename}: {result.error.evalue}"
        if not result.error.traceback.rstrip().endswith(tail):
            parts.append(tail)
    return "\n".join(parts)
