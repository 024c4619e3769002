"""The error envelope `{"error": {code, message, details, id, timestamp}}` and the exception
that route code raises to produce it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel
from starlette.responses import Response
from temporalio.service import RPCError, RPCStatusCode

from controlplane.errors import (
    Broken,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Refused,
    TimedOut,
    Unauthenticated,
    Unavailable,
    UpstreamFailed,
)

CODE_BY_STATUS = {
    400: "BAD_REQUEST",
    401: "AUTHENTICATION_ERROR",
    403: "AUTHORIZATION_ERROR",
    404: "RESOURCE_NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "RESOURCE_CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


class ApiError(Exception):
    """Raised anywhere below a route; rendered as the envelope with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or CODE_BY_STATUS.get(status, "ERROR")
        self.message = message
        self.details = details
        self.headers = headers


# The status each kind of domain refusal answers with.
STATUS_BY_KIND: dict[type[DomainError], int] = {
    Unauthenticated: 401,
    NotFound: 404,
    Conflict: 409,
    Refused: 400,
    Invalid: 422,
    Forbidden: 403,
    RateLimited: 429,
    Unavailable: 503,
    UpstreamFailed: 502,
    TimedOut: 504,
    Broken: 500,
}


# What a client is told to wait before it tries again while a backend is down.
RETRY_AFTER_SECONDS = 5


def from_domain(error: DomainError) -> ApiError:
    status = next((code for kind, code in STATUS_BY_KIND.items() if isinstance(error, kind)), 400)
    headers = None
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after)}
    elif isinstance(error, Unavailable):
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return ApiError(status, error.message, code=error.code, details=error.details, headers=headers)


def not_found(kind: str, ident: object) -> ApiError:
    # Another tenant's id answers exactly like a missing one.
    return ApiError(404, f"{kind} '{ident}' not found")


def conflict(message: str, **details: Any) -> ApiError:
    return ApiError(409, message, details=details or None)


def envelope(
    status: int, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "code": code or CODE_BY_STATUS.get(status, "ERROR"),
            "message": message,
            "details": details,
            "id": str(uuid.uuid4()),
            "timestamp": datetime.now(UTC).isoformat(),
        }
    }


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON body serialised in one step: a model by pydantic's own serializer (as
    `model_dump_json` does, straight to bytes), anything else by orjson."""
    if isinstance(content, BaseModel):
        body = content.__pydantic_serializer__.to_json(content)
    else:
        body = orjson.dumps(content)
    return Response(body, status_code, headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(
        envelope(error.status, error.message, code=error.code, details=error.details),
        error.status,
        error.headers,
    )


def backend_down(error: BaseException) -> str | None:
    """Which backend an unexpected error says is unreachable (Postgres, Temporal), or None for
    any other error: a request that met an outage answers 503, not 500."""
    if isinstance(
        error,
        asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.TooManyConnectionsError
        | asyncpg.InterfaceError
        # A connection the server closed in the middle of an exchange (Postgres shutting down)
        # can be left mid-operation: its next query says "another operation is in progress".
        | asyncpg.InternalClientError
        | ConnectionError
        | TimeoutError,
    ):
        return "the database"
    if isinstance(error, OSError) and error.errno is not None:
        return "the database"  # no socket to connect to: refused, missing, unreachable
    if isinstance(error, RPCError) and error.status in (
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
    ):
        return "Temporal"
    return None


def unavailable(backend: str) -> ApiError:
    return ApiError(
        503,
        f"The service is unavailable: {backend} cannot be reached; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )
