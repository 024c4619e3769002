"""The outermost middleware: request id, JSON access log, metrics, the body size cap, and the
last-resort 500 that never leaks a stack trace."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, backend_down, error_response, unavailable
from api.state import AppState
from controlplane.logs import request_id_var

log = logging.getLogger("controlplane.api")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return str(candidate)
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.cp
        metrics = state.metrics
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        limit = state.settings.max_body_bytes
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, f"Request body exceeds {limit} bytes")
            return message

        metrics.in_flight.inc()
        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                raise ApiError(413, f"Request body exceeds {limit} bytes")
            await self.app(scope, capped_receive, send_with_id)
        except ApiError as error:
            if not response_started:
                await error_response(error)(scope, receive, send_with_id)
        except Exception as error:
            backend = backend_down(error)
            if backend is not None:
                log.warning(
                    "backend unavailable",
                    extra={"path": scope["path"], "backend": backend, "error": str(error)[:200]},
                )
                if not response_started:
                    await error_response(unavailable(backend))(scope, receive, send_with_id)
                return
            log.exception("unhandled error", extra={"path": scope["path"]})
            if not response_started:
                internal = ApiError(
                    500, "Internal server error", details={"request_id": request_id}
                )
                await error_response(internal)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route_template", "unmatched")
            metrics.in_flight.dec()
            metrics.requests.labels(route, scope["method"], str(status)).inc()
            metrics.latency.labels(route, scope["method"]).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)
