"""How failures become HTTP answers: the one place bridge errors meet status codes.

Every failure body has one shape, ``{success: false, error, error_type, status}``; a call that
timed out or lost its kernel also carries the output it made before (stdout, stderr, outputs).
"""

from __future__ import annotations

from typing import Any

from bridge import (
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
    PackageConflict,
    ScriptRefused,
)

from .schema import SchemaError


class ApiError(Exception):
    """A failure answer: HTTP *status*, one of schema.ERROR_TYPES, a message, extra fields."""

    def __init__(self, status: int, error_type: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "success": False,
            "error": self.message,
            "error_type": self.error_type,
            "status": self.status,
            **self.extra,
        }


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


_REFUSALS = {"not_found": 404, "forbidden": 403, "too_large": 413}


def _refused(exc: ScriptRefused) -> ApiError:
    status = _REFUSALS.get(exc.reason, 400)
    return ApiError(status, exc.reason if status != 400 else "bad_request", str(exc))


def _so_far(result: ExecutionResult | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"stdout": result.stdout, "stderr": result.stderr, "outputs": result.outputs}


def to_api_error(exc: BaseException) -> ApiError | None:
    """The answer for *exc*, or None if it is not an error a request can cause (a bug)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SchemaError):
        return bad_request(str(exc))
    if isinstance(exc, ExecutionTimeout):
        return ApiError(504, "timeout", str(exc), restarted=exc.restarted, **_so_far(exc.result))
    if isinstance(exc, CallTimeout):
        return ApiError(504, "timeout", str(exc), restarted=False)
    if isinstance(exc, InstallTimeout):
        return ApiError(504, "timeout", str(exc))
    if isinstance(exc, PackageConflict):
        return ApiError(409, "conflict", str(exc), conflicts=exc.conflicts)
    if isinstance(exc, BackendStartError):
        if isinstance(exc.__cause__, KernelStartError):
            return ApiError(503, "busy", str(exc))
        if exc.traceback:
            return ApiError(400, "python_error", str(exc), traceback=exc.traceback)
        return bad_request(str(exc))
    if isinstance(exc, KernelDied):
        return ApiError(503, "kernel_died", str(exc), **_so_far(exc.result))
    if isinstance(exc, KernelStartError):
        return ApiError(503, "busy", f"no kernel available: {exc}")
    if isinstance(exc, BridgeClosed):
        # The service shutting down, or the context the call ran in deleted meanwhile.
        return ApiError(503, "busy", f"closed during the call: {exc}")
    if isinstance(exc, ScriptRefused):
        return _refused(exc)
    if isinstance(exc, InvalidRequest):
        return bad_request(str(exc))
    if isinstance(exc, BridgeError):
        return ApiError(503, "busy", str(exc))
    return None
