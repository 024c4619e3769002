"""Authentication and the per-key rate limit, in one middleware and one database round trip.

The rate limit is a fixed one-minute window counted in Postgres, so every API process sees the
same count: a client cannot multiply its limit by spreading requests over replicas.
"""

from __future__ import annotations

import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response
from api.principal import Principal
from api.state import AppState
from controlplane.tenancy import hash_key

WINDOW_SECONDS = 60
PROTECTED_PREFIX = "/api/v1"
# Under the protected prefix but authenticated otherwise: an inbound job webhook carries the
# signature of its body, not a key (api/routes/jobs.py).
SIGNED_PREFIXES = ("/api/v1/jobs/webhook/",)
WORKER_TOKEN_PREFIX = "worker_"

_AUTHENTICATE = """
WITH key AS (
    SELECT k.id, k.organization_id, k.role, k.worker_queue_id, o.rate_limit_per_minute
    FROM api_keys k JOIN organizations o ON o.id = k.organization_id
    WHERE k.key_hash = $1 AND k.revoked_at IS NULL
), hit AS (
    INSERT INTO rate_limit_counters (api_key_id, window_start, count)
    SELECT id, $2, 1 FROM key
    ON CONFLICT (api_key_id, window_start)
    DO UPDATE SET count = rate_limit_counters.count + 1
    RETURNING count
)
SELECT key.id, key.organization_id, key.role, key.worker_queue_id, key.rate_limit_per_minute,
       hit.count
FROM key, hit
"""

# Worker tokens have their own, generous limit per token (WORKER_RATE_LIMIT_PER_MINUTE): a
# runaway worker cannot flood the API, and a healthy one is never refused a heartbeat.
_AUTHENTICATE_WORKER = """
WITH worker AS (
    SELECT id, organization_id, worker_queue_id FROM workers
    WHERE worker_token_hash = $1 AND status <> 'disconnected'
), hit AS (
    INSERT INTO rate_limit_counters (api_key_id, window_start, count)
    SELECT id, $2, 1 FROM worker
    ON CONFLICT (api_key_id, window_start)
    DO UPDATE SET count = rate_limit_counters.count + 1
    RETURNING count
)
SELECT worker.id, worker.organization_id, worker.worker_queue_id, hit.count
FROM worker, hit
"""


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = str(value.decode("latin-1")).strip().partition(" ")
            if scheme.lower() in ("bearer", "userkey") and token.strip():
                return token.strip()
            return None
    return None


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not path.startswith(PROTECTED_PREFIX)
            or path.startswith(SIGNED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.cp
        token = bearer_token(scope)
        if token is None:
            await self._reject(
                scope, receive, send, "Missing API key: send 'Authorization: Bearer <key>'"
            )
            return
        now = time.time()
        window = int(now) // WINDOW_SECONDS * WINDOW_SECONDS
        if token.startswith(WORKER_TOKEN_PREFIX):
            row = await state.pool.fetchrow(_AUTHENTICATE_WORKER, hash_key(token), window)
            if row is None:
                await self._reject(scope, receive, send, "Invalid or disconnected worker token")
                return
            scope["principal"] = Principal(
                row["organization_id"],
                "worker_token",
                worker_id=row["id"],
                worker_queue_id=row["worker_queue_id"],
            )
            limit: int = state.settings.worker_rate_limit_per_minute
        else:
            row = await state.pool.fetchrow(_AUTHENTICATE, hash_key(token), window)
            if row is None:
                await self._reject(scope, receive, send, "Invalid or revoked API key")
                return
            scope["principal"] = Principal(
                row["organization_id"],
                row["role"],
                api_key_id=row["id"],
                worker_queue_id=row["worker_queue_id"],
            )
            limit = row["rate_limit_per_minute"]
        reset = window + WINDOW_SECONDS
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - row["count"])),
            "X-RateLimit-Reset": str(reset),
        }
        if row["count"] > limit:
            retry_after = max(1, math.ceil(reset - now))
            error = ApiError(
                429,
                f"Rate limit of {limit} requests per minute exceeded",
                details={"limit": limit, "retry_after_seconds": retry_after},
                headers=headers | {"Retry-After": str(retry_after)},
            )
            await error_response(error)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (k.lower().encode(), v.encode()) for k, v in headers.items()
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        error = ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
        await error_response(error)(scope, receive, send)
