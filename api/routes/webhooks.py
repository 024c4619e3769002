"""`/api/v1/webhooks`: outbound webhook subscriptions (reference §2: the Kubiya platform's shape,
`{url, events[], description, status}` with counters). The signing secret (`whsec_...`) is shown
once, at create and on rotate-secret; those responses are never cached nor replayed for an
Idempotency-Key. Writes need an admin key: a subscription sends the organization's events out.

Deliveries are signed per the Standard Webhooks specification and retried for 24 h by the
system worker (controlplane/webhooks/, workflows/webhooks.py); the deliveries log shows every
attempt."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import asyncpg
from pydantic import BaseModel, Field

from api.access import vault_of
from api.pagination import ListQuery, Page
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.outbox import EventType
from controlplane.webhooks import delivery, subscriptions
from controlplane.webhooks.subscriptions import MAX_URL_LENGTH, WEBHOOKS

router = Router("webhooks")

# One Literal (nested ones flatten), so a bad entry gets one clear error.
Subscribed = Literal[EventType, "*"]
Status = Literal["active", "disabled"]
AttemptStatus = Literal["sending", "succeeded", "failed", "interrupted"]
EVENTS_DOC = "Event types to receive; `*` receives every type"


class WebhookCreate(BaseModel):
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, description="http(s) receiver")
    events: list[Subscribed] = Field(min_length=1, max_length=50, description=EVENTS_DOC)
    description: str | None = Field(None, max_length=2000)
    status: Status = "active"


class WebhookUpdate(PatchBody):
    required_if_sent = ("url", "events", "status")

    url: str | None = Field(None, min_length=1, max_length=MAX_URL_LENGTH)
    events: list[Subscribed] | None = Field(None, min_length=1, max_length=50)
    description: str | None = Field(None, max_length=2000)
    status: Status | None = None


class WebhookOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    url: str
    events: list[str]
    description: str | None
    status: Status
    disabled_reason: str | None = Field(description="Why it is disabled, when it is")
    disabled_at: datetime | None
    delivery_attempts: int = Field(description="Every POST made")
    successful_deliveries: int = Field(description="Events delivered (a 2xx)")
    failed_deliveries: int = Field(description="Events given up on after the retry window")
    last_triggered_at: datetime | None
    last_success_at: datetime | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WebhookOut:
        return cls.model_validate(dict(row))


class WebhookWithSecret(WebhookOut):
    secret: str = Field(description="`whsec_` + base64 of the 32-byte signing key; shown only now")


class WebhookQuery(ListQuery):
    status: Status | None = None


class DeliveryQuery(ListQuery):
    status: AttemptStatus | None = None
    event_type: str | None = Field(None, max_length=100)
    event_id: uuid.UUID | None = None


class DeliveryAttemptOut(BaseModel):
    """One POST of one event to the subscription."""

    id: int
    webhook_id: uuid.UUID
    delivery_id: uuid.UUID
    event_id: uuid.UUID = Field(description="The `webhook-id` header: the same on every retry")
    event_type: str
    attempt: int = Field(description="The delivery's attempt number, from 1")
    status: AttemptStatus
    status_code: int | None
    duration_ms: int | None
    response_excerpt: str | None = Field(description="The first KiB of the response body")
    error: str | None
    next_retry_at: datetime | None = Field(description="When the next attempt comes, if any")
    delivery_status: str = Field(description="pending | succeeded | failed | abandoned")
    started_at: datetime
    finished_at: datetime | None


class TestDelivery(BaseModel):
    delivered: bool
    attempt: DeliveryAttemptOut


def _id(call: Call) -> uuid.UUID:
    return call.path_uuid("webhook_id", "Webhook")


@router.post("/api/v1/webhooks", status=201, role="admin", carries_secret=True)
async def create_webhook(call: Call, body: WebhookCreate) -> WebhookWithSecret:
    """Subscribe a URL to events; the answer holds the signing secret, shown only now."""
    row, secret = await subscriptions.create(
        call.db,
        vault_of(call),
        call.org,
        call.principal.actor,
        url=body.url,
        events=body.events,
        description=body.description,
        status=body.status,
        allow_private=call.state.settings.webhook_allow_private,
    )
    return WebhookWithSecret(**WebhookOut.from_row(row).model_dump(), secret=secret)


@router.get("/api/v1/webhooks")
async def list_webhooks(call: Call, query: WebhookQuery) -> Page[WebhookOut]:
    """The organization's subscriptions, oldest first."""
    rows, total = await WEBHOOKS.page(
        call.db, call.org, limit=query.limit, offset=query.start, filters={"status": query.status}
    )
    items = [WebhookOut.from_row(row) for row in rows]
    return Page[WebhookOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/webhooks/{webhook_id}")
async def get_webhook(call: Call) -> WebhookOut:
    """One subscription (never its secret)."""
    return WebhookOut.from_row(await WEBHOOKS.get(call.db, call.org, _id(call)))


@router.patch("/api/v1/webhooks/{webhook_id}", role="admin")
async def update_webhook(call: Call, body: WebhookUpdate) -> WebhookOut:
    """Change the URL, events, description or status; enabling again clears `disabled_reason`."""
    webhook_id = _id(call)
    async with call.db.acquire() as conn, conn.transaction():
        row = await subscriptions.update(
            conn,
            call.org,
            webhook_id,
            body.changes(),
            actor=call.principal.actor,
            allow_private=call.state.settings.webhook_allow_private,
        )
    return WebhookOut.from_row(row)


@router.delete("/api/v1/webhooks/{webhook_id}", role="admin")
async def delete_webhook(call: Call) -> Deleted:
    """Delete a subscription; its pending deliveries stop."""
    webhook_id = _id(call)
    await WEBHOOKS.delete(call.db, call.org, webhook_id)
    return Deleted(id=webhook_id)


@router.post("/api/v1/webhooks/{webhook_id}/rotate-secret", role="admin", carries_secret=True)
async def rotate_secret(call: Call) -> WebhookWithSecret:
    """A new signing secret, effective at once (retries too); shown only now."""
    vault = vault_of(call)
    async with call.db.acquire() as conn, conn.transaction():
        row, secret = await subscriptions.rotate_secret(conn, vault, call.org, _id(call))
    return WebhookWithSecret(**WebhookOut.from_row(row).model_dump(), secret=secret)


@router.post("/api/v1/webhooks/{webhook_id}/test", role="admin")
async def test_webhook(call: Call) -> TestDelivery:
    """POST a `webhook.test` event now, once (even to a disabled subscription); the outcome is
    in the answer and in the deliveries log. Not retried; never disables the subscription."""
    outcome, attempt = await delivery.send_test(
        call.db,
        vault_of(call),
        call.org,
        _id(call),
        actor=call.principal.actor,
        allow_private=call.state.settings.webhook_allow_private,
    )
    return TestDelivery(
        delivered=outcome.outcome == "delivered",
        attempt=DeliveryAttemptOut.model_validate(dict(attempt)),
    )


@router.get("/api/v1/webhooks/{webhook_id}/deliveries")
async def list_deliveries(call: Call, query: DeliveryQuery) -> Page[DeliveryAttemptOut]:
    """The deliveries log: every attempt, newest first, with its event, status code, duration,
    response excerpt and the time of the next retry."""
    rows, total = await delivery.attempts_page(
        call.db,
        call.org,
        _id(call),
        limit=query.limit,
        offset=query.start,
        status=query.status,
        event_type=query.event_type,
        event_id=query.event_id,
    )
    items = [DeliveryAttemptOut.model_validate(dict(row)) for row in rows]
    return Page[DeliveryAttemptOut](items=items, total=total, limit=query.limit, offset=query.start)
