-- The runner a worker runs on (`controlplane worker --runner-name`, by default its host name):
-- `/api/v1/runners` groups workers by it. Workers started before this migration are known by
-- their host name.
ALTER TABLE workers ADD COLUMN runner_name text NOT NULL DEFAULT 'unknown';
UPDATE workers SET runner_name = hostname WHERE hostname IS NOT NULL;
CREATE INDEX workers_runner ON workers (organization_id, runner_name, last_heartbeat);
