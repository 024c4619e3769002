-- Worker keys: API keys of role `worker`, bound to one queue; they may only start workers there.
-- The role check becomes api_keys_role_scope, which ties the role to the queue. Dropped first,
-- so a database that already has it (see 0002) gets the same constraint.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS worker_queue_id uuid
    REFERENCES worker_queues(id) ON DELETE CASCADE;
ALTER TABLE api_keys
    DROP CONSTRAINT IF EXISTS api_keys_role_check,
    DROP CONSTRAINT IF EXISTS api_keys_role_scope,
    ADD CONSTRAINT api_keys_role_scope CHECK (
        role IN ('admin', 'member', 'viewer', 'worker')
        AND (role = 'worker') = (worker_queue_id IS NOT NULL));
