-- A team's member runs: each delegation of a team execution records one child execution, named
-- by a key the team's workflow chooses (its turn and the leader's tool call), so a retried
-- request answers the run already recorded instead of starting a second one.
ALTER TABLE executions ADD COLUMN delegation_key text;
CREATE UNIQUE INDEX executions_delegation ON executions (parent_execution_id, delegation_key)
    WHERE parent_execution_id IS NOT NULL;
