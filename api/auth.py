"""Authentication and the per-credential rate limit, in one middleware.

Who a key or worker token belongs to is read from Postgres and kept in memory for
`Settings.auth_cache_seconds` (5 s by default), so most requests make no database round trip
here. The price: a key revoked, or a worker disconnected, through another API process (or the
CLI) keeps working on this one until its entry is that old. This process forgets the entry at
once when the change is made through it.

The rate limit is a fixed one-minute window counted in Postgres, so every API process sees the
same count: a client cannot multiply its limit by spreading requests over replicas
(api/rate_limits.py reserves requests in batches, so not every request writes).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.credentials import Credential
from api.errors import ApiError, error_response
from api.principal import Principal
from api.state import AppState
from controlplane.tenancy import hash_key

PROTECTED_PREFIX = "/api/v1"
# Under the protected prefix but authenticated otherwise: an inbound job webhook carries the
# signature of its body, not a key (api/routes/jobs.py).
SIGNED_PREFIXES = ("/api/v1/jobs/webhook/",)
WORKER_TOKEN_PREFIX = "worker_"

_KEY = """
SELECT k.id, k.organization_id, k.role, k.worker_queue_id, o.rate_limit_per_minute
FROM api_keys k JOIN organizations o ON o.id = k.organization_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL
"""

# Worker tokens have their own, generous limit per token (WORKER_RATE_LIMIT_PER_MINUTE): a
# runaway worker cannot flood the API, and a healthy one is never refused a heartbeat.
_WORKER = """
SELECT id, organization_id, worker_queue_id FROM workers
WHERE worker_token_hash = $1 AND status <> 'disconnected'
"""


async def _load(state: AppState, token: str, token_hash: str) -> Credential | None:
    now = time.monotonic()
    if token.startswith(WORKER_TOKEN_PREFIX):
        row = await state.pool.fetchrow(_WORKER, token_hash)
        if row is None:
            return None
        principal = Principal(
            row["organization_id"],
            "worker_token",
            worker_id=row["id"],
            worker_queue_id=row["worker_queue_id"],
        )
        return Credential(principal, row["id"], state.settings.worker_rate_limit_per_minute, now)
    row = await state.pool.fetchrow(_KEY, token_hash)
    if row is None:
        return None
    principal = Principal(
        row["organization_id"],
        row["role"],
        api_key_id=row["id"],
        worker_queue_id=row["worker_queue_id"],
    )
    return Credential(principal, row["id"], row["rate_limit_per_minute"], now)


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
        token_hash = hash_key(token)
        credential = state.credentials.get(token_hash, time.monotonic())
        if credential is None:
            credential = await _load(state, token, token_hash)
            if credential is None:
                message = (
                    "Invalid or disconnected worker token"
                    if token.startswith(WORKER_TOKEN_PREFIX)
                    else "Invalid or revoked API key"
                )
                await self._reject(scope, receive, send, message)
                return
            state.credentials.put(token_hash, credential)
        scope["principal"] = credential.principal
        now = time.time()
        decision = await state.rate_limiter.hit(credential.counter, credential.limit, now)
        headers = decision.headers()
        if not decision.allowed:
            retry_after = decision.retry_after(now)
            error = ApiError(
                429,
                f"Rate limit of {decision.limit} requests per minute exceeded",
                details={"limit": decision.limit, "retry_after_seconds": retry_after},
                headers=headers | {"Retry-After": str(retry_after)},
            )
            await error_response(error)(scope, receive, send)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        error = ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
        await error_response(error)(scope, receive, send)
