"""How failures become answers: the one list of error types, and the one place bridge errors
meet status codes.

Every failure answer has one shape (``models.Failure``): ``{success: false, error,
error_type, status}``, plus what its cause adds (the output made before a timeout, the
exception a script raised, the field a bad request got wrong). Each ``ErrorType`` is one
cause a client acts on differently, and has one HTTP status (``STATUS``).

A Python error (the user's code raised) is not a failure of the request: it is HTTP 200 with
``success: false``, ``error_type: "python_error"`` and the exception as ``exception:
{ename, evalue, traceback}``, on every route (docs/http.md, "Failures").
"""

from __future__ import annotations

import enum
from typing import Any

from bridge import (
    BackendError,
    BackendLost,
    BackendStartError,
    BridgeClosed,
    BridgeError,
    CallTimeout,
    ExecutionResult,
    ExecutionTimeout,
    InstallTimeout,
    InvalidRequest,
    KernelDied,
    KernelStartError,
    Overloaded,
    PackageConflict,
    PathRefused,
)


class ErrorType(enum.StrEnum):
    """Why a request failed: one value per cause a client acts on differently."""

    BAD_REQUEST = "bad_request"  # fix the request (``field`` names what is wrong)
    UNAUTHORIZED = "unauthorized"  # send the token
    FORBIDDEN = "forbidden"  # a path outside the root, a disallowed Host, installs off
    NOT_FOUND = "not_found"  # no such backend, context, file or route
    METHOD_NOT_ALLOWED = "method_not_allowed"  # the Allow header lists those there are
    CONFLICT = "conflict"  # a name taken, an install that would change the service itself
    TOO_LARGE = "too_large"  # the body is past the service's limit
    LIMIT_REACHED = "limit_reached"  # too many backends or contexts: delete one first
    PYTHON_ERROR = "python_error"  # the user's code raised: ``exception`` holds it
    TIMEOUT = "timeout"  # the code ran past its timeout and was interrupted
    KERNEL_DIED = "kernel_died"  # the kernel died (a context or backend needs a restart)
    KERNEL_START_FAILED = "kernel_start_failed"  # no kernel could be started
    OVERLOADED = "overloaded"  # every pool kernel busy, its wait queue full: Retry-After
    SHUTTING_DOWN = "shutting_down"  # the service, or the context of the call, is closing
    UNAVAILABLE = "unavailable"  # the kernel could not be reached (a transport failure)
    INTERNAL = "internal"  # a bug: the server's log has the details


# The one HTTP status of each error type.
STATUS: dict[ErrorType, int] = {
    ErrorType.BAD_REQUEST: 400,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.CONFLICT: 409,
    ErrorType.TOO_LARGE: 413,
    ErrorType.LIMIT_REACHED: 429,
    ErrorType.PYTHON_ERROR: 200,
    ErrorType.TIMEOUT: 504,
    ErrorType.KERNEL_DIED: 503,
    ErrorType.KERNEL_START_FAILED: 503,
    ErrorType.OVERLOADED: 503,
    ErrorType.SHUTTING_DOWN: 503,
    ErrorType.UNAVAILABLE: 503,
    ErrorType.INTERNAL: 500,
}


class ApiError(Exception):
    """A failure answer: its *error_type* (which fixes its status), a message, extra fields
    of ``models.Failure`` (``field``, ``stdout``, ``exception``, ...)."""

    def __init__(self, error_type: ErrorType, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = STATUS[error_type]
        self.message = message
        self.extra = extra


def bad_request(message: str, *, field: str | None = None) -> ApiError:
    if field is None:
        return ApiError(ErrorType.BAD_REQUEST, message)
    return ApiError(ErrorType.BAD_REQUEST, message, field=field)


def not_found(message: str) -> ApiError:
    return ApiError(ErrorType.NOT_FOUND, message)


def internal() -> ApiError:
    # Only a bug gets here: the log has the traceback, the client never sees it.
    return ApiError(ErrorType.INTERNAL, "internal error; the server's log has the details")


def exception_of(ename: str, evalue: str, traceback: str) -> dict[str, str]:
    """The one shape of a Python exception in every answer: ``{ename, evalue, traceback}``
    (the traceback as plain text)."""
    return {"ename": ename, "evalue": evalue, "traceback": traceback}


_REFUSALS = {
    "not_found": ErrorType.NOT_FOUND,
    "forbidden": ErrorType.FORBIDDEN,
    "too_large": ErrorType.TOO_LARGE,
}


def _so_far(result: ExecutionResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"stdout": result.stdout, "stderr": result.stderr, "outputs": result.outputs}


def _backend_start(exc: BackendStartError) -> ApiError:
    if isinstance(exc.__cause__, KernelStartError):
        return ApiError(ErrorType.KERNEL_START_FAILED, str(exc))
    if exc.traceback:
        raised = exception_of(exc.ename, exc.evalue, exc.traceback)
        return ApiError(ErrorType.PYTHON_ERROR, str(exc), exception=raised)
    return bad_request(str(exc))


def to_api_error(exc: BaseException) -> ApiError | None:
    """The answer for *exc*, or None if it is not an error a request can cause (a bug)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ExecutionTimeout):
        return ApiError(ErrorType.TIMEOUT, str(exc), restarted=exc.restarted, **_so_far(exc.result))
    if isinstance(exc, CallTimeout):
        return ApiError(ErrorType.TIMEOUT, str(exc), restarted=False)
    if isinstance(exc, InstallTimeout):
        return ApiError(ErrorType.TIMEOUT, str(exc))
    if isinstance(exc, PackageConflict):
        return ApiError(ErrorType.CONFLICT, str(exc), conflicts=exc.conflicts)
    if isinstance(exc, BackendStartError):
        return _backend_start(exc)
    if isinstance(exc, BackendError):  # a call's Python error is an answer (service.call)
        raised = exception_of(exc.ename, exc.evalue, exc.traceback)
        return ApiError(ErrorType.PYTHON_ERROR, str(exc), exception=raised)
    if isinstance(exc, KernelDied):
        limit = {"reason": exc.reason} if exc.reason else {}
        return ApiError(ErrorType.KERNEL_DIED, str(exc), **limit, **_so_far(exc.result))
    if isinstance(exc, Overloaded):
        return ApiError(ErrorType.OVERLOADED, str(exc), retry_after=exc.retry_after)
    if isinstance(exc, BackendLost):
        return ApiError(ErrorType.KERNEL_DIED, str(exc))
    if isinstance(exc, KernelStartError):
        return ApiError(ErrorType.KERNEL_START_FAILED, f"no kernel available: {exc}")
    if isinstance(exc, BridgeClosed):
        # The service shutting down, or the context the call ran in deleted meanwhile.
        return ApiError(ErrorType.SHUTTING_DOWN, f"closed during the call: {exc}")
    if isinstance(exc, PathRefused):  # a script for execute-file, a context's file
        return ApiError(_REFUSALS.get(exc.reason, ErrorType.BAD_REQUEST), str(exc))
    if isinstance(exc, InvalidRequest):
        return bad_request(str(exc))
    if isinstance(exc, BridgeError):
        return ApiError(ErrorType.UNAVAILABLE, str(exc))
    return None
