"""The errors of the jobs service; each becomes a JSON answer ``{"detail": ..., "field": ...}`` with its status.

    JobsError                     status + detail + the field at fault (None when no field is)
    ├── BadRequestError           400: body or query string that is not what the API reads
    ├── UnauthorizedError         401: the bearer token is missing or wrong
    ├── NotFoundError             404: no such target, config or job at this path
    ├── ConflictError             409: the namespace/name is taken; the job is in the wrong state for this
    └── InvalidFieldError         422: a field of the body is invalid (unknown target, config without command, ...)
"""

from __future__ import annotations

from typing import Any


class JobsError(Exception):
    status = 500

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "field": self.field}


class BadRequestError(JobsError):
    status = 400


class UnauthorizedError(JobsError):
    status = 401


class NotFoundError(JobsError):
    status = 404


class ConflictError(JobsError):
    status = 409


class InvalidFieldError(JobsError):
    status = 422
