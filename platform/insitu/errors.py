"""The few exception classes insitu raises, with messages a scientist can act on.

Every error derives from :class:`InsituError` and also from the builtin it stands
for, so callers may catch either. ``status_code`` is what the API answers with.
"""

from __future__ import annotations


class InsituError(Exception):
    """Root of every error insitu raises on purpose; its message is safe to show."""

    status_code = 500
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(InsituError, ValueError):
    """Something the user sent is malformed or inconsistent (a spec, a selection, a bundle)."""

    status_code = 422
    code = "invalid_input"


class NotFound(InsituError, LookupError):
    """A named object (job, dataset, result, array) does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(InsituError):
    """The request clashes with the current state (a name taken, a job already finished)."""

    status_code = 409
    code = "conflict"


class AuthenticationFailed(InsituError, PermissionError):
    """No token, or a token that is unknown or revoked."""

    status_code = 401
    code = "unauthenticated"


class PermissionDenied(InsituError, PermissionError):
    """The caller is known but may not do this."""

    status_code = 403
    code = "forbidden"


class LimitReached(InsituError):
    """The caller has used up a limit that frees itself (queued jobs, request rate)."""

    status_code = 429
    code = "limit_reached"


class TooLarge(InsituError, ValueError):
    """A request body is larger than the server accepts."""

    status_code = 413
    code = "too_large"


class StoreUnreachable(InsituError, OSError):
    """The object store or file behind a URL cannot be read."""

    status_code = 422
    code = "store_unreachable"


class ResultTooLarge(InsituError):
    """A job tried to return more than its result cap allows."""

    status_code = 422
    code = "result_too_large"


class AnalysisFailed(InsituError, RuntimeError):
    """The user's analysis raised, or could not be imported."""

    status_code = 422
    code = "analysis_failed"


class BackendError(InsituError, RuntimeError):
    """The execution backend could not start, watch or stop a job."""

    status_code = 503
    code = "backend_error"


class BackendBusy(BackendError):
    """The backend will start the job shortly, not now (a warm sandbox is on its way)."""

    code = "backend_busy"
