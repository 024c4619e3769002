"""One attempt of a delivery, giving a delivery up, and the test event.

An attempt: under the delivery's row lock, note the attempt (`sending`) and count it, then, with
no lock held, POST the event signed with the subscription's current secret to its current URL,
connecting only to an address the network guard has just checked (the name is resolved once;
a DNS answer that changed to an internal address since the URL was written is refused). Then
record the outcome. 2xx is delivered; anything else (another status, a redirect, a timeout, a
refused address) is a failed attempt that the workflow retries. An attempt row still `sending`
when the next one starts was cut short by a dying worker and is marked `interrupted`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from activities.tools.network_guard import AddressRefused, send_pinned
from controlplane import VERSION, outbox
from controlplane.crud import fetch_page
from controlplane.errors import not_found
from controlplane.vault import Vault, VaultError
from controlplane.webhooks.signing import signed_headers
from controlplane.webhooks.subscriptions import PRIVATE_HINT, WEBHOOKS, open_secret

TIMEOUT_SECONDS = 10.0
EXCERPT_BYTES = 1024
USER_AGENT = f"controlplane-webhooks/{VERSION}"


@dataclass
class Outcome:
    outcome: str  # delivered | failed | abandoned
    status_code: int | None = None
    error: str | None = None


@dataclass
class _Response:
    status_code: int | None
    excerpt: str | None
    error: str | None
    duration_ms: int


def _text(raw: bytes) -> str:
    # Postgres text holds no NUL.
    return raw.decode("utf-8", "replace").replace("\x00", "\\x00")


async def _post(url: str, headers: dict[str, str], body: bytes, allow_private: bool) -> _Response:
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = httpx.URL(url)
        async with (
            httpx.AsyncClient(timeout=TIMEOUT_SECONDS, trust_env=False) as client,
            asyncio.timeout(TIMEOUT_SECONDS),  # resolving and reading count too
        ):
            response = await send_pinned(
                client,
                "POST",
                target,
                headers,
                body,
                allow_private=allow_private,
                private_hint=PRIVATE_HINT,
            )
            try:
                excerpt = bytearray()
                async for chunk in response.aiter_bytes():
                    excerpt.extend(chunk[: EXCERPT_BYTES - len(excerpt)])
                    if len(excerpt) >= EXCERPT_BYTES:
                        break
            finally:
                await response.aclose()
        return _Response(response.status_code, _text(bytes(excerpt)), None, elapsed())
    except AddressRefused as refused:
        return _Response(None, None, f"address refused: {refused}", elapsed())
    except (TimeoutError, httpx.TimeoutException):
        return _Response(None, None, f"timed out after {TIMEOUT_SECONDS:g} s", elapsed())
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
        return _Response(None, None, f"{type(error).__name__}: {error}", elapsed())


_LOAD = (
    "SELECT d.id, d.organization_id, d.webhook_id, d.event_id, d.status, d.attempts, "
    "o.payload, w.url, w.status AS webhook_status, w.secret_ciphertext, w.secret_nonce "
    "FROM webhook_deliveries d JOIN outbox_events o ON o.event_id = d.event_id "
    "JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = $1 FOR UPDATE OF d"
)


async def attempt(
    db: asyncpg.Pool[Any],
    vault: Vault | None,
    delivery_id: uuid.UUID,
    *,
    allow_private: bool,
    next_retry_seconds: int | None,
    even_if_disabled: bool = False,
) -> Outcome:
    """POST the delivery's event once and record it in the deliveries log."""
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_LOAD, delivery_id)
        if row is None:  # the subscription (or its organization) was deleted
            return Outcome("abandoned", error="the subscription no longer exists")
        if row["status"] == "succeeded":
            return Outcome("delivered")
        if row["status"] != "pending":
            return Outcome("abandoned", error=f"the delivery is {row['status']}")
        if row["webhook_status"] != "active" and not even_if_disabled:
            await conn.execute(
                "UPDATE webhook_deliveries SET status = 'abandoned', completed_at = now() "
                "WHERE id = $1",
                delivery_id,
            )
            return Outcome("abandoned", error="the subscription is disabled")
        await conn.execute(
            "UPDATE webhook_delivery_attempts SET status = 'interrupted', finished_at = now(), "
            "error = 'cut short: the control plane stopped during the request' "
            "WHERE delivery_id = $1 AND status = 'sending'",
            delivery_id,
        )
        number = row["attempts"] + 1
        await conn.execute(
            "UPDATE webhook_deliveries SET attempts = $2 WHERE id = $1", delivery_id, number
        )
        attempt_id = await conn.fetchval(
            "INSERT INTO webhook_delivery_attempts (organization_id, webhook_id, delivery_id, "
            "attempt, status) VALUES ($1, $2, $3, $4, 'sending') RETURNING id",
            row["organization_id"],
            row["webhook_id"],
            delivery_id,
            number,
        )
        await conn.execute(
            "UPDATE webhooks SET delivery_attempts = delivery_attempts + 1, "
            "last_triggered_at = now() WHERE id = $1",
            row["webhook_id"],
        )
    result = await _send(row, vault, allow_private)
    delivered = result.status_code is not None and 200 <= result.status_code < 300
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE webhook_delivery_attempts SET status = $2, status_code = $3, "
            "duration_ms = $4, response_excerpt = $5, error = $6, finished_at = now(), "
            "next_retry_at = CASE WHEN $7::int IS NULL THEN NULL "
            "ELSE now() + make_interval(secs => $7::int) END WHERE id = $1",
            attempt_id,
            "succeeded" if delivered else "failed",
            result.status_code,
            result.duration_ms,
            result.excerpt,
            result.error,
            None if delivered else next_retry_seconds,
        )
        if delivered:
            await conn.execute(
                "UPDATE webhook_deliveries SET status = 'succeeded', completed_at = now() "
                "WHERE id = $1",
                delivery_id,
            )
            await conn.execute(
                "UPDATE webhooks SET successful_deliveries = successful_deliveries + 1, "
                "last_success_at = now() WHERE id = $1",
                row["webhook_id"],
            )
    if delivered:
        return Outcome("delivered", result.status_code)
    return Outcome("failed", result.status_code, result.error or f"HTTP {result.status_code}")


async def _send(row: asyncpg.Record, vault: Vault | None, allow_private: bool) -> _Response:
    if vault is None:
        return _Response(None, None, "the control plane has no vault key to sign with", 0)
    try:
        secret = open_secret(
            vault,
            row["organization_id"],
            row["webhook_id"],
            row["secret_ciphertext"],
            row["secret_nonce"],
        )
    except VaultError as error:
        return _Response(None, None, str(error), 0)
    body = json.dumps(row["payload"], separators=(",", ":")).encode()
    headers = signed_headers(secret, str(row["event_id"]), int(time.time()), body)
    headers["user-agent"] = USER_AGENT
    return await _post(row["url"], headers, body, allow_private)


async def give_up(db: asyncpg.Pool[Any], delivery_id: uuid.UUID, window_seconds: int) -> bool:
    """The delivery's window ended without a 2xx: it failed. If nothing got through to the
    subscription since the delivery began, every attempt failed for the whole window: disable
    the subscription, say why, and tell the organization's other subscribers (`error`).
    Returns whether it was disabled."""
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT d.id, d.organization_id, d.webhook_id, d.event_id, d.status, d.attempts, "
            "d.created_at FROM webhook_deliveries d WHERE d.id = $1 FOR UPDATE",
            delivery_id,
        )
        if row is None or row["status"] != "pending":
            return False
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'failed', completed_at = now() WHERE id = $1",
            delivery_id,
        )
        last = await conn.fetchrow(
            "SELECT status_code, error FROM webhook_delivery_attempts WHERE delivery_id = $1 "
            "ORDER BY id DESC LIMIT 1",
            delivery_id,
        )
        last_error = (
            (f"HTTP {last['status_code']}" if last["status_code"] else last["error"])
            if last
            else "no attempt ran"
        )
        reason = (
            f"Every delivery attempt failed for {_duration(window_seconds)} "
            f"({row['attempts']} attempts of event {row['event_id']}; last: {last_error})"
        )
        disabled = await conn.fetchrow(
            "UPDATE webhooks SET failed_deliveries = failed_deliveries + 1, "
            "status = CASE WHEN disabling THEN 'disabled' ELSE status END, "
            "disabled_reason = CASE WHEN disabling THEN $2 ELSE disabled_reason END, "
            "disabled_at = CASE WHEN disabling THEN now() ELSE disabled_at END, "
            "updated_at = now() "
            "FROM (SELECT status = 'active' AND (last_success_at IS NULL "
            "OR last_success_at < $3) AS disabling FROM webhooks WHERE id = $1) judged "
            "WHERE id = $1 RETURNING disabling, url",
            row["webhook_id"],
            reason,
            row["created_at"],
        )
        if disabled is None or not disabled["disabling"]:
            return False
        await outbox.record(
            conn,
            row["organization_id"],
            "error",
            {
                "code": "WEBHOOK_DISABLED",
                "message": f"Webhook {row['webhook_id']} was disabled: {reason}",
                "webhook_id": str(row["webhook_id"]),
                "url": disabled["url"],
            },
        )
        return True


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"


async def send_test(
    db: asyncpg.Pool[Any],
    vault: Vault | None,
    org: str,
    webhook_id: uuid.UUID,
    *,
    actor: str,
    allow_private: bool,
) -> tuple[Outcome, asyncpg.Record]:
    """POST a `webhook.test` event to this subscription alone, once, now (even if it is
    disabled, to check a receiver before enabling it again). It is in the deliveries log like
    any attempt; a failure is not retried and does not count towards disabling."""
    async with db.acquire() as conn, conn.transaction():
        exists = await conn.fetchval(
            "SELECT 1 FROM webhooks WHERE id = $1 AND organization_id = $2", webhook_id, org
        )
        if exists is None:
            raise not_found("Webhook", webhook_id)
        event_id = await outbox.record(
            conn,
            org,
            outbox.TEST_EVENT_TYPE,
            {"webhook_id": str(webhook_id), "message": "A test event", "sent_by": actor},
            dispatched=True,
        )
        delivery_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO webhook_deliveries (id, organization_id, webhook_id, event_id, "
            "scheduled_at) VALUES ($1, $2, $3, $4, now())",
            delivery_id,
            org,
            webhook_id,
            event_id,
        )
    outcome = await attempt(
        db,
        vault,
        delivery_id,
        allow_private=allow_private,
        next_retry_seconds=None,
        even_if_disabled=True,
    )
    if outcome.outcome != "delivered":
        await db.execute(
            "UPDATE webhook_deliveries SET status = 'failed', completed_at = now() "
            "WHERE id = $1 AND status = 'pending'",
            delivery_id,
        )
    logged = await db.fetchrow(
        f"SELECT {ATTEMPT_COLUMNS} FROM {ATTEMPTS_TABLE} WHERE a.delivery_id = $1 "
        "ORDER BY a.id DESC LIMIT 1",
        delivery_id,
    )
    assert logged is not None
    return outcome, logged


# The deliveries log: each attempt with its event.
ATTEMPTS_TABLE = (
    "webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id "
    "JOIN outbox_events o ON o.event_id = d.event_id"
)
ATTEMPT_COLUMNS = (
    "a.id, a.webhook_id, a.delivery_id, d.event_id, o.event_type, a.attempt, a.status, "
    "a.status_code, a.duration_ms, a.response_excerpt, a.error, a.next_retry_at, a.started_at, "
    "a.finished_at, d.status AS delivery_status"
)


async def attempts_page(
    db: asyncpg.Pool[Any],
    org: str,
    webhook_id: uuid.UUID,
    *,
    limit: int,
    offset: int,
    status: str | None,
    event_type: str | None,
    event_id: uuid.UUID | None,
) -> tuple[list[asyncpg.Record], int]:
    """The subscription's deliveries log, newest attempt first."""
    await WEBHOOKS.get(db, org, webhook_id)
    return await fetch_page(
        db,
        table=ATTEMPTS_TABLE,
        columns=ATTEMPT_COLUMNS,
        where="a.webhook_id = $1 AND a.organization_id = $2",
        args=[webhook_id, org],
        limit=limit,
        offset=offset,
        order="a.id DESC",
        filters={"a.status": status, "o.event_type": event_type, "d.event_id": event_id},
    )
