-- 0017: an execution's workflow start, kept with its row until the workflow is known to run.
--
-- `POST .../execute` answers once the execution's row is committed and starts its workflow
-- right after, in the background (controlplane/executions/starting.py). The row keeps the
-- workflow's input (a Temporal payload, as the client would send it; templates unrendered, so
-- no secret) until the first report of the workflow clears it, so a start that never happened
-- (the API process died, Temporal was down) is made by the system worker's housekeeping round.

ALTER TABLE executions ADD COLUMN start_payload bytea;

-- The housekeeping round's scan: only rows still waiting for their start are in it.
CREATE INDEX executions_awaiting_start ON executions (created_at) WHERE start_payload IS NOT NULL;
