-- 0018: the housekeeping round deletes outbox events past the webhook log's retention
-- (controlplane/housekeeping.py); with them go their deliveries and attempts (ON DELETE CASCADE).
-- The round finds them by age; the cascade and the "still being retried" check find an event's
-- deliveries by event id, which the (webhook_id, event_id) key does not lead with.
CREATE INDEX outbox_events_dispatched_age ON outbox_events (created_at)
    WHERE dispatched_at IS NOT NULL;
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
