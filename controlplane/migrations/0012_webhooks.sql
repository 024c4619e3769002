-- Outbound webhooks (controlplane/webhooks/): subscriptions, one delivery per (subscription,
-- event), and every attempt of a delivery.

-- A subscription. The signing secret is sealed by the vault (AES-GCM, bound to the row by its
-- associated data); it is shown once, at create and rotate. Counters: every POST made
-- (`delivery_attempts`), events delivered (`successful_deliveries`) and events given up on
-- after the retry window (`failed_deliveries`).
CREATE TABLE webhooks (
    id                    uuid PRIMARY KEY,
    organization_id       text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    url                   text NOT NULL,
    events                text[] NOT NULL,
    description           text,
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_reason       text,
    disabled_at           timestamptz,
    secret_ciphertext     bytea NOT NULL,
    secret_nonce          bytea NOT NULL,
    secret_key_version    integer NOT NULL,
    delivery_attempts     bigint NOT NULL DEFAULT 0,
    successful_deliveries bigint NOT NULL DEFAULT 0,
    failed_deliveries     bigint NOT NULL DEFAULT 0,
    last_triggered_at     timestamptz,
    last_success_at       timestamptz,
    created_by            text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_org ON webhooks (organization_id, created_at, id);
CREATE INDEX webhooks_active ON webhooks (organization_id) WHERE status = 'active';

-- One event for one subscription. UNIQUE (webhook_id, event_id): fanning an event out twice
-- (a retried dispatch) delivers it once. `scheduled_at`: its delivery workflow was started.
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    webhook_id      uuid NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id        uuid NOT NULL REFERENCES outbox_events(event_id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed', 'abandoned')),
    attempts        integer NOT NULL DEFAULT 0,
    scheduled_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_unscheduled ON webhook_deliveries (created_at)
    WHERE scheduled_at IS NULL;

-- The deliveries log: one row per POST. `sending` while it is in flight; a row still sending
-- when the next attempt of its delivery starts was cut short (`interrupted`: the system worker
-- died mid-request).
CREATE TABLE webhook_delivery_attempts (
    id               bigserial PRIMARY KEY,
    organization_id  text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    webhook_id       uuid NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    delivery_id      uuid NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('sending', 'succeeded', 'failed', 'interrupted')),
    status_code      integer,
    duration_ms      integer,
    response_excerpt text,
    error            text,
    next_retry_at    timestamptz,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX webhook_delivery_attempts_webhook ON webhook_delivery_attempts (webhook_id, id);
CREATE INDEX webhook_delivery_attempts_delivery ON webhook_delivery_attempts (delivery_id, id);

-- The dispatcher listens, so an event goes out as soon as its transaction commits (NOTIFY is
-- delivered at commit, and not at all on rollback); it polls too, in case a notice is missed.
CREATE FUNCTION outbox_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();
