"""Webhook subscriptions: `{url, events[], description, status}` and counters, with a signing
secret sealed by the vault (shown once, at create and rotate).

A URL is checked when written: http(s) only, and no host that resolves to a private or loopback
address (unless CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE, for development) nor, ever, to a link-local
or metadata address. A name that does not resolve yet is accepted: every delivery checks the
address it connects to again (controlplane/webhooks/delivery.py), which is what really guards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from activities.tools.network_guard import AddressRefused, check_address, default_port, resolve
from controlplane.crud import Table
from controlplane.db import Conn, Queryable
from controlplane.errors import Invalid
from controlplane.outbox import EVENT_TYPES
from controlplane.vault import Vault
from controlplane.webhooks.signing import new_secret

ALL_EVENTS = "*"
STATUSES = ("active", "disabled")
MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_SECONDS = 5
PRIVATE_HINT = "set CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE=true on the control plane to allow it"
COLUMNS = (
    "id, organization_id, url, events, description, status, disabled_reason, disabled_at, "
    "delivery_attempts, successful_deliveries, failed_deliveries, last_triggered_at, "
    "last_success_at, created_by, created_at, updated_at"
)
WEBHOOKS = Table("webhooks", "Webhook", COLUMNS)
PATCHABLE = ("url", "events", "description", "status", "disabled_reason", "disabled_at")


def _refused(message: str, field: str, kind: str) -> Invalid:
    return Invalid(
        message,
        details={"validation_errors": [{"field": field, "message": message, "type": kind}]},
    )


async def check_url(raw: str, *, allow_private: bool) -> str:
    """The URL as it will be stored, or Invalid saying why the control plane will not post to it."""
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError) as error:
        raise _refused(f"Invalid URL: {error}", "url", "url_parsing") from None
    if url.scheme not in ("http", "https"):
        raise _refused("The URL must be http or https", "url", "url_scheme")
    if not url.host:
        raise _refused("The URL has no host", "url", "url_parsing")
    if len(str(url)) > MAX_URL_LENGTH:
        raise _refused(f"The URL is longer than {MAX_URL_LENGTH} characters", "url", "too_long")
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            addresses = await resolve(url.host, url.port or default_port(url))
    except (AddressRefused, TimeoutError):
        return str(url)  # not resolvable now: every delivery checks it again
    for address in addresses:
        try:
            check_address(address, url.host, allow_private, PRIVATE_HINT)
        except AddressRefused as refused:
            raise _refused(f"Webhook URL refused: {refused}", "url", "url_refused") from None
    return str(url)


def normalised_events(events: Sequence[str]) -> list[str]:
    """Known event types, each once, in the order given; `*` (every type) stands alone."""
    unknown = [event for event in events if event != ALL_EVENTS and event not in EVENT_TYPES]
    if unknown:
        raise _refused(f"Unknown event type '{unknown[0]}'", "events", "event_type")
    if not events:
        raise _refused("Subscribe to at least one event type (or '*')", "events", "too_short")
    if ALL_EVENTS in events:
        return [ALL_EVENTS]
    return list(dict.fromkeys(events))


def _secret_name(webhook_id: uuid.UUID) -> str:
    # The vault binds a ciphertext to (organization, name): this one to its own row.
    return f"webhook:{webhook_id}"


def open_secret(
    vault: Vault, org: str, webhook_id: uuid.UUID, ciphertext: bytes, nonce: bytes
) -> str:
    """The signing secret of a subscription, from its sealed columns."""
    return vault.open(org, _secret_name(webhook_id), ciphertext, nonce)


async def create(
    db: Queryable,
    vault: Vault,
    org: str,
    actor: str,
    *,
    url: str,
    events: Sequence[str],
    description: str | None,
    status: str,
    allow_private: bool,
) -> tuple[asyncpg.Record, str]:
    """A new subscription and its secret (the only time but a rotation that it is shown)."""
    checked = await check_url(url, allow_private=allow_private)
    webhook_id = uuid.uuid4()
    secret = new_secret()
    sealed = vault.seal(org, _secret_name(webhook_id), secret)
    row: asyncpg.Record | None = await db.fetchrow(
        "INSERT INTO webhooks (id, organization_id, url, events, description, status, "
        "secret_ciphertext, secret_nonce, secret_key_version, created_by, disabled_at, "
        "disabled_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
        "CASE WHEN $6 = 'disabled' THEN now() END, "
        "CASE WHEN $6 = 'disabled' THEN 'disabled when created' END) "
        f"RETURNING {COLUMNS}",
        webhook_id,
        org,
        checked,
        normalised_events(events),
        description,
        status,
        sealed.ciphertext,
        sealed.nonce,
        sealed.key_version,
        actor,
    )
    assert row is not None
    return row, secret


async def update(
    conn: Conn,
    org: str,
    webhook_id: uuid.UUID,
    changes: dict[str, Any],
    *,
    actor: str,
    allow_private: bool,
) -> asyncpg.Record:
    """Apply a PATCH (in the caller's transaction). Re-enabling clears why it was disabled;
    disabling by hand says who did it."""
    changes = dict(changes)
    if "url" in changes:
        changes["url"] = await check_url(changes["url"], allow_private=allow_private)
    if "events" in changes:
        changes["events"] = normalised_events(changes["events"])

    async def status_change(current: asyncpg.Record, wanted: dict[str, Any]) -> None:
        status = wanted.get("status")
        if status is None or status == current["status"]:
            return
        if status == "active":
            wanted.update(disabled_reason=None, disabled_at=None)
        else:
            wanted.update(disabled_reason=f"disabled by {actor}", disabled_at=datetime.now(UTC))

    return await WEBHOOKS.patch(
        conn,
        org,
        webhook_id,
        changes,
        PATCHABLE,
        duplicate="Duplicate webhook",
        check=status_change,
    )


async def rotate_secret(
    conn: Conn, vault: Vault, org: str, webhook_id: uuid.UUID
) -> tuple[asyncpg.Record, str]:
    """A new secret replaces the old one at once: the next attempt of every delivery, retries
    included, is signed with it."""
    await WEBHOOKS.get(conn, org, webhook_id)
    secret = new_secret()
    sealed = vault.seal(org, _secret_name(webhook_id), secret)
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE webhooks SET secret_ciphertext = $3, secret_nonce = $4, secret_key_version = $5, "
        f"updated_at = now() WHERE id = $1 AND organization_id = $2 RETURNING {COLUMNS}",
        webhook_id,
        org,
        sealed.ciphertext,
        sealed.nonce,
        sealed.key_version,
    )
    assert row is not None
    return row, secret
