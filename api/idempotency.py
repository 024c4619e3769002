"""`Idempotency-Key` on POST: the same key and body replay the first response and create nothing
again; the same key with another body is a 409.

The key is claimed with an INSERT before the route runs, so two concurrent requests with one key
cannot both create: the second sees the claim and gets a 409 until the first has finished.
A first request that ends in a server error releases its claim, so the client may retry.

Records belong to the credential (API key or worker token) that made the request: another key
of the organization, of whatever role, never sees its response. A response that carried a
credential (`Cache-Control: no-store`: a new API key, a worker token) is not stored: its repeat
answers 409 instead of handing the credential out again.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response
from api.principal import Principal
from api.routing import NO_STORE
from api.state import AppState

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
# NUL cannot be stored in Postgres text; no other control character belongs in a key either.
# (Bytes 0x80..0xff are UTF-8 read as latin-1, and allowed.)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    chunks: list[bytes] = []
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


def _header_of(start: dict[str, Any], name: bytes) -> str | None:
    for key, value in start.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _is_stream(start: dict[str, Any]) -> bool:
    return (_header_of(start, b"content-type") or "").startswith("text/event-stream")


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal | None = scope.get("principal")
        key = _header(scope, HEADER) if scope["type"] == "http" else None
        if key is None or principal is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY_LENGTH or _CONTROL.search(key):
            error = ApiError(
                400, f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} characters, none a control"
            )
            await error_response(error)(scope, receive, send)
            return
        state: AppState = scope["app"].state.cp
        body, messages = await _read_body(receive)
        fingerprint = hashlib.sha256(
            scope["method"].encode() + b" " + scope["path"].encode() + b"\n" + body
        ).hexdigest()
        owner = (principal.organization_id, _credential(principal))

        claimed = await state.pool.fetchval(
            "INSERT INTO idempotency_keys (organization_id, credential, idempotency_key, "
            "request_hash) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
            *owner,
            key,
            fingerprint,
        )
        if not claimed:
            await self._answer_repeat(scope, receive, send, state, owner, key, fingerprint)
            return

        replay = iter(messages)

        async def replay_receive() -> Message:
            message = next(replay, None)
            return message if message is not None else await receive()

        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def capture_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body" and not _is_stream(start):
                parts.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture_send)
        finally:
            await self._record(state, owner, key, start, b"".join(parts))

    @staticmethod
    async def _record(
        state: AppState, owner: tuple[str, str], key: str, start: dict[str, Any], body: bytes
    ) -> None:
        status = start.get("status", 500)
        if status >= 500:
            await state.pool.execute(
                "DELETE FROM idempotency_keys WHERE organization_id = $1 AND credential = $2 "
                "AND idempotency_key = $3",
                *owner,
                key,
            )
            return
        replayable = _header_of(start, b"cache-control") != NO_STORE
        if not replayable:
            body = b""
        content_type = _header_of(start, b"content-type") or "application/json"
        if _is_stream(start):
            # A stream is not stored; its replay says where to reconnect.
            location = _header_of(start, b"content-location")
            body = json.dumps(
                {
                    "stream": True,
                    "location": location,
                    "message": "Replayed: reconnect to the "
                    "stream at `location` (with Last-Event-ID to resume)",
                }
            ).encode()
            content_type = "application/json"
        await state.pool.execute(
            "UPDATE idempotency_keys SET status_code = $4, content_type = $5, response_body = $6, "
            "replayable = $7 WHERE organization_id = $1 AND credential = $2 "
            "AND idempotency_key = $3",
            *owner,
            key,
            status,
            content_type,
            body,
            replayable,
        )

    @staticmethod
    async def _answer_repeat(
        scope: Scope,
        receive: Receive,
        send: Send,
        state: AppState,
        owner: tuple[str, str],
        key: str,
        fingerprint: str,
    ) -> None:
        row = await state.pool.fetchrow(
            "SELECT request_hash, status_code, content_type, response_body, replayable "
            "FROM idempotency_keys WHERE organization_id = $1 AND credential = $2 "
            "AND idempotency_key = $3",
            *owner,
            key,
        )
        if row is None:  # released by a failed first attempt between our two statements
            error = ApiError(409, "A request with this Idempotency-Key just failed; retry it")
        elif row["request_hash"] != fingerprint:
            error = ApiError(
                409,
                "Idempotency-Key was already used with a different request",
                details={"idempotency_key": key},
            )
        elif row["status_code"] is None:
            error = ApiError(409, "A request with this Idempotency-Key is still in progress")
        elif not row["replayable"]:
            error = ApiError(
                409,
                "This request was already carried out; its response held a credential, which "
                "is shown only once and not replayed",
                details={"idempotency_key": key, "first_status": row["status_code"]},
            )
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": row["status_code"],
                    "headers": [
                        (b"content-type", row["content_type"].encode()),
                        (b"content-length", str(len(row["response_body"])).encode()),
                        (b"idempotent-replayed", b"true"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": row["response_body"]})
            return
        await error_response(error)(scope, receive, send)


def _credential(principal: Principal) -> str:
    return str(principal.api_key_id or principal.worker_id or "")
