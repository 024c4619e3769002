-- Teams: agents working together under a coordination mode. The columns a team shares with
-- an agent (skills, environments, execution environment, model) mean the same here: context,
-- skill and execution-environment resolution read them as the team layer.
CREATE TABLE teams (
    id                    uuid PRIMARY KEY,
    organization_id       text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                  text NOT NULL,
    description           text,
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'inactive', 'archived', 'idle')),
    runtime               text NOT NULL DEFAULT 'default'
                          CHECK (runtime IN ('default', 'claude_code')),
    coordination_type     text NOT NULL DEFAULT 'leader'
                          CHECK (coordination_type IN ('leader', 'sequential', 'parallel')),
    configuration         jsonb NOT NULL DEFAULT '{}',
    skill_ids             jsonb NOT NULL DEFAULT '[]',
    skill_configurations  jsonb NOT NULL DEFAULT '{}',
    environment_ids       jsonb NOT NULL DEFAULT '[]',
    execution_environment jsonb NOT NULL DEFAULT '{}',
    model_id              text,
    created_by            text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    last_active_at        timestamptz,
    UNIQUE (organization_id, name)
);
CREATE INDEX teams_org ON teams (organization_id, created_at, id);
