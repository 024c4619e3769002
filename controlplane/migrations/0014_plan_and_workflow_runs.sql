-- Plan executions and user-defined workflows (controlplane/runs/).
--
-- A run of either is an execution of its own (type `plan` or `workflow`), so it has a status,
-- transitions, a stream and webhooks like any other; its steps are child executions
-- (parent_execution_id = the run, delegation_key = the step's id).

ALTER TABLE executions DROP CONSTRAINT IF EXISTS executions_execution_type_check;
ALTER TABLE executions ADD CONSTRAINT executions_execution_type_check
    CHECK (execution_type IN ('agent', 'team', 'workflow', 'plan_generation', 'plan'));

-- The plan a plan execution runs (reference §4: executions.plan_json).
ALTER TABLE executions ADD COLUMN plan_json jsonb;

-- A workflow's runs, newest first, and a plan execution's list.
CREATE INDEX executions_runs ON executions (organization_id, execution_type, entity_id, created_at)
    WHERE execution_type IN ('plan', 'workflow');

-- The steps of a run (a plan's tasks, a workflow's steps), as the run's workflow records them.
-- The Temporal workflow is the source of truth; this is its read model.
CREATE TABLE execution_steps (
    execution_id       uuid NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    step_id            text NOT NULL,
    organization_id    text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    position           integer NOT NULL,
    name               text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('agent', 'team', 'approval')),
    entity_id          uuid,
    depends_on         jsonb NOT NULL DEFAULT '[]',
    status             text NOT NULL DEFAULT 'pending' CHECK (status IN
                       ('pending', 'running', 'waiting_for_input', 'waiting_for_approval',
                        'completed', 'failed', 'rejected', 'skipped', 'cancelled')),
    -- The step's execution (the run's child, deleted with it). No foreign key: its check would
    -- share-lock the child's row while the run's row is locked, and a worker's report locks
    -- the child, then the run (a member's events reach its parent's stream): a deadlock.
    child_execution_id uuid,
    prompt             text,  -- what the step was given, rendered
    output             text,
    error_message      text,
    decided_by         text,
    -- The run's record that last changed the row: an older one (a retry) changes nothing.
    sequence           bigint NOT NULL DEFAULT 0,
    started_at         timestamptz,
    completed_at       timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, step_id)
);

-- User-defined workflows (reference §3.4): a definition; its status is its latest run's.
CREATE TABLE workflows (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text,
    steps           jsonb NOT NULL DEFAULT '[]',
    configuration   jsonb NOT NULL DEFAULT '{}',
    team_id         uuid REFERENCES teams(id) ON DELETE SET NULL,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);
CREATE INDEX workflows_org ON workflows (organization_id, created_at, id);
