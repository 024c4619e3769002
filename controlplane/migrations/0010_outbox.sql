-- Events for webhook subscribers, written in the same transaction as the change they announce
-- (controlplane/outbox.py), so none is lost or announced for a change that rolled back.
-- `event_id` is what receivers see as `webhook-id`, the same on every retry.
CREATE TABLE outbox_events (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    dispatched_at   timestamptz
);
CREATE INDEX outbox_events_pending ON outbox_events (id) WHERE dispatched_at IS NULL;
CREATE INDEX outbox_events_org ON outbox_events (organization_id, id);
