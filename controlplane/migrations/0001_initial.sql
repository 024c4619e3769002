-- 0001: the schema of the last release that applied schema.sql at every start-up (commit 12b6226),
-- kept as it was. Its statements are idempotent (IF NOT EXISTS), so on a database that file set
-- up, of that release or an earlier one, it fills in what is missing exactly as that start-up
-- did, and is recorded as on a new database. The model catalogue seed that file ended with is
-- now repeatable/model_catalogue.sql, run after the migrations.
-- Every tenant-owned row carries organization_id (the organization's slug) and every query filters on it.

CREATE TABLE IF NOT EXISTS organizations (
    id                    text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name                  text NOT NULL,
    rate_limit_per_minute integer NOT NULL DEFAULT 100 CHECK (rate_limit_per_minute > 0),
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_keys (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            text NOT NULL,
    prefix          text NOT NULL,
    key_hash        text NOT NULL UNIQUE,
    role            text NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text,
    revoked_at      timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_org ON api_keys (organization_id, created_at, id);

-- One row per API key per minute; shared by every API process, so the limit holds across replicas.
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_counters (
    api_key_id   uuid NOT NULL,
    window_start bigint NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (api_key_id, window_start)
);

-- Idempotency-Key records: the first request's fingerprint and, once finished, its response.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    organization_id text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    text NOT NULL,
    status_code     integer,
    content_type    text,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, idempotency_key)
);

CREATE TABLE IF NOT EXISTS projects (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            text NOT NULL,
    key             text NOT NULL,
    description     text,
    settings        jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived', 'draft')),
    visibility      text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'org')),
    owner_id        text,
    owner_email     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    archived_at     timestamptz,
    UNIQUE (organization_id, key),
    UNIQUE (organization_id, name)
);

-- Project membership; agents and teams join these when their resources exist.
CREATE TABLE IF NOT EXISTS project_agents (
    id         uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    agent_id   uuid NOT NULL,
    role       text,
    added_by   text,
    added_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, agent_id)
);

CREATE TABLE IF NOT EXISTS project_teams (
    id         uuid PRIMARY KEY,
    project_id uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    team_id    uuid NOT NULL,
    role       text,
    added_by   text,
    added_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, team_id)
);

CREATE TABLE IF NOT EXISTS environments (
    id                       uuid PRIMARY KEY,
    organization_id          text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                     text NOT NULL,
    display_name             text,
    description              text,
    tags                     jsonb NOT NULL DEFAULT '[]',
    settings                 jsonb NOT NULL DEFAULT '{}',
    status                   text NOT NULL DEFAULT 'ready' CHECK (status IN
                               ('pending', 'provisioning', 'ready', 'active', 'inactive', 'error', 'archived')),
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    created_by               text,
    worker_token             uuid NOT NULL,
    provisioning_workflow_id text,
    provisioned_at           timestamptz,
    error_message            text,
    temporal_namespace_id    text,
    execution_environment    jsonb NOT NULL DEFAULT '{}',
    UNIQUE (organization_id, name)
);

CREATE TABLE IF NOT EXISTS worker_queues (
    id                 uuid PRIMARY KEY,
    organization_id    text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    environment_id     uuid NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    name               text NOT NULL,
    display_name       text,
    description        text,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'maintenance')),
    max_workers        integer CHECK (max_workers IS NULL OR max_workers >= 1),
    heartbeat_interval integer NOT NULL DEFAULT 60 CHECK (heartbeat_interval >= 1),
    tags               jsonb NOT NULL DEFAULT '[]',
    settings           jsonb NOT NULL DEFAULT '{}',
    ephemeral          boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    created_by         text,
    UNIQUE (environment_id, name)
);
CREATE INDEX IF NOT EXISTS worker_queues_org ON worker_queues (organization_id, created_at, id);

-- Workers started on a queue and their last heartbeat; a worker is active while its heartbeat
-- is under 150 s old.
CREATE TABLE IF NOT EXISTS workers (
    id                uuid PRIMARY KEY,
    organization_id   text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    worker_queue_id   uuid NOT NULL REFERENCES worker_queues(id) ON DELETE CASCADE,
    hostname          text,
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'idle', 'busy', 'offline', 'disconnected')),
    tasks_processed   integer NOT NULL DEFAULT 0,
    current_task_id   text,
    worker_metadata   jsonb NOT NULL DEFAULT '{}',
    system_info       jsonb NOT NULL DEFAULT '{}',
    worker_token_hash text UNIQUE,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat    timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS workers_queue ON workers (worker_queue_id, last_heartbeat);

-- ---------------------------------------------------------------------------------------------
-- Executions: the read model of agent/team executions. The Temporal workflow is the source of
-- truth; workers report here over the worker protocol.
CREATE TABLE IF NOT EXISTS executions (
    id                   uuid PRIMARY KEY,
    organization_id      text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    execution_type       text NOT NULL DEFAULT 'agent'
                         CHECK (execution_type IN ('agent', 'team', 'workflow', 'plan_generation')),
    entity_id            uuid,
    entity_name          text,
    runner_name          text,
    user_id              text,
    user_name            text,
    user_email           text,
    user_avatar          text,
    trigger_source       text NOT NULL DEFAULT 'user',
    prompt               text NOT NULL,
    system_prompt        text,
    status               text NOT NULL DEFAULT 'pending' CHECK (status IN
                         ('pending', 'queued', 'running', 'waiting_for_input', 'paused',
                          'completed', 'failed', 'cancelled')),
    response             text,
    error_message        text,
    usage                jsonb NOT NULL DEFAULT '{}',
    execution_metadata   jsonb NOT NULL DEFAULT '{}',
    temporal_workflow_id text UNIQUE,
    worker_queue_id      uuid REFERENCES worker_queues(id) ON DELETE SET NULL,
    last_event_seq       bigint NOT NULL DEFAULT 0,
    status_version       bigint NOT NULL DEFAULT 0,
    last_message_at      timestamptz,
    last_message_preview text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    completed_at         timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS executions_org ON executions (organization_id, created_at, id);

CREATE TABLE IF NOT EXISTS execution_participants (
    id             uuid PRIMARY KEY,
    execution_id   uuid NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    organization_id text NOT NULL,
    user_id        text NOT NULL,
    user_email     text,
    user_name      text,
    user_avatar    text,
    role           text NOT NULL DEFAULT 'owner' CHECK (role IN ('owner', 'collaborator', 'viewer')),
    joined_at      timestamptz NOT NULL DEFAULT now(),
    last_active_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (execution_id, user_id)
);

-- Every status change with its time.
CREATE TABLE IF NOT EXISTS execution_transitions (
    id              bigserial PRIMARY KEY,
    execution_id    uuid NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    organization_id text NOT NULL,
    from_state      text,
    to_state        text NOT NULL,
    reasoning       text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The stream. seq is per execution and assigned under the execution's row lock, so rows commit
-- in seq order and a reader resuming after seq N can never miss a row that commits later.
-- event_key makes a retried report land once.
CREATE TABLE IF NOT EXISTS execution_events (
    execution_id uuid NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    event_type   text NOT NULL,
    data         jsonb NOT NULL DEFAULT '{}',
    event_key    text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq),
    UNIQUE (execution_id, event_key)
);

CREATE TABLE IF NOT EXISTS sessions (
    execution_id    uuid PRIMARY KEY REFERENCES executions(id) ON DELETE CASCADE,
    session_id      text NOT NULL,
    organization_id text NOT NULL,
    user_id         text,
    messages        jsonb NOT NULL DEFAULT '[]',
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- ------------------------------------------------------------------------------------------------
-- Models, agents.

-- The model catalogue: rows with a NULL organization_id are the global catalogue seeded below
-- (read-only through the API); an organization sees those and its own rows.
CREATE TABLE IF NOT EXISTS llm_models (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id     text REFERENCES organizations(id) ON DELETE CASCADE,
    value               text NOT NULL,
    label               text NOT NULL,
    provider            text NOT NULL,
    api_model           text,  -- the name sent to the provider; NULL: the part of value after '/'
    model_type          text NOT NULL DEFAULT 'text-generation',
    logo                text,
    description         text,
    enabled             boolean NOT NULL DEFAULT true,
    recommended         boolean NOT NULL DEFAULT false,
    compatible_runtimes jsonb NOT NULL DEFAULT '[]',
    capabilities        jsonb NOT NULL DEFAULT '{}',
    pricing             jsonb,  -- {input_per_million, output_per_million, currency: "USD"}
    display_order       integer NOT NULL DEFAULT 1000,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    created_by          text
);
CREATE UNIQUE INDEX IF NOT EXISTS llm_models_global_value ON llm_models (value)
    WHERE organization_id IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS llm_models_org_value ON llm_models (organization_id, value)
    WHERE organization_id IS NOT NULL;

-- Agents. system_prompt lives in configuration.system_prompt, as in Kubiya; team_id and
-- skill_ids point at resources added later, so they carry no foreign key yet.
CREATE TABLE IF NOT EXISTS agents (
    id                    uuid PRIMARY KEY,
    organization_id       text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                  text NOT NULL,
    description           text,
    status                text NOT NULL DEFAULT 'idle' CHECK (status IN
                            ('idle', 'running', 'paused', 'completed', 'failed', 'stopped')),
    capabilities          jsonb NOT NULL DEFAULT '[]',
    configuration         jsonb NOT NULL DEFAULT '{}',
    model_id              text,
    llm_config            jsonb NOT NULL DEFAULT '{}',
    runtime               text NOT NULL DEFAULT 'default' CHECK (runtime IN ('default', 'claude_code')),
    runner_name           text,
    team_id               uuid,
    state                 jsonb NOT NULL DEFAULT '{}',
    error_message         text,
    last_active_at        timestamptz,
    skill_ids             jsonb NOT NULL DEFAULT '[]',
    skill_configurations  jsonb NOT NULL DEFAULT '{}',
    environment_ids       jsonb NOT NULL DEFAULT '[]',
    execution_environment jsonb NOT NULL DEFAULT '{}',
    created_by            text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);
CREATE INDEX IF NOT EXISTS agents_org ON agents (organization_id, created_at, id);
CREATE INDEX IF NOT EXISTS project_agents_agent ON project_agents (agent_id);

-- The run's own execution_environment override (env_vars, secrets, integration_ids, mcp_servers).
ALTER TABLE executions ADD COLUMN IF NOT EXISTS execution_environment jsonb NOT NULL DEFAULT '{}';

-- Skills (reference §3.10; 0.3 "toolsets"; controlplane/tool_catalogue.py has the types) and
-- their associations with agents, teams and environments (api/skills.py resolves them).
CREATE TABLE IF NOT EXISTS skills (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            text NOT NULL,
    skill_type      text NOT NULL,
    description     text,
    icon            text NOT NULL DEFAULT 'Wrench',
    enabled         boolean NOT NULL DEFAULT true,
    configuration   jsonb NOT NULL DEFAULT '{}',
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);
CREATE INDEX IF NOT EXISTS skills_org ON skills (organization_id, created_at, id);

CREATE TABLE IF NOT EXISTS skill_associations (
    id                     uuid PRIMARY KEY,
    organization_id        text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    skill_id               uuid NOT NULL REFERENCES skills(id) ON DELETE CASCADE,
    entity_type            text NOT NULL CHECK (entity_type IN ('agent', 'team', 'environment')),
    entity_id              uuid NOT NULL,
    configuration_override jsonb NOT NULL DEFAULT '{}',
    created_by             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (skill_id, entity_type, entity_id)
);
CREATE INDEX IF NOT EXISTS skill_associations_entity
    ON skill_associations (organization_id, entity_type, entity_id, created_at, id);

-- Context (reference §3.15, §8): one row per entity, created empty on first read. entity_id is
-- text because an organization's id is its slug; the others are uuids.
CREATE TABLE IF NOT EXISTS entity_contexts (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    entity_type     text NOT NULL
                    CHECK (entity_type IN ('organization', 'project', 'environment', 'team', 'agent')),
    entity_id       text NOT NULL,
    knowledge_uuids text[] NOT NULL DEFAULT '{}',
    resource_ids    text[] NOT NULL DEFAULT '{}',
    policy_ids      text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, entity_type, entity_id)
);

-- Rego policies (reference §3.14, §9) and their associations. `version` grows with every update,
-- so (id, version) names one text: engines cache compiled policies under it.
CREATE TABLE IF NOT EXISTS policies (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            text NOT NULL,
    description     text,
    policy_content  text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    tags            jsonb NOT NULL DEFAULT '[]',
    metadata        jsonb NOT NULL DEFAULT '{}',
    version         integer NOT NULL DEFAULT 1,
    created_by      text,
    updated_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);
CREATE INDEX IF NOT EXISTS policies_org ON policies (organization_id, created_at, id);

-- entity_id is text: roles are names, the other entities uuids (agents, environments, teams).
CREATE TABLE IF NOT EXISTS policy_associations (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    policy_id       uuid NOT NULL REFERENCES policies(id) ON DELETE CASCADE,
    entity_type     text NOT NULL CHECK (entity_type IN ('agent', 'team', 'environment', 'role')),
    entity_id       text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    priority        integer NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (policy_id, entity_type, entity_id)
);
CREATE INDEX IF NOT EXISTS policy_associations_org ON policy_associations (organization_id, created_at, id);
CREATE INDEX IF NOT EXISTS policy_associations_entity
    ON policy_associations (organization_id, entity_type, entity_id);

-- ------------------------------------------------------------------------------------------------
-- Secrets vault, its audit, and custom integrations (api/vault.py, api/routes/secrets.py,
-- api/routes/integrations.py). Values are AES-256-GCM ciphertexts; the key never reaches the
-- database. The associated data binds each ciphertext to (organization, name).
CREATE TABLE IF NOT EXISTS secrets (
    id              uuid PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    description     text,
    ciphertext      bytea NOT NULL,
    nonce           bytea NOT NULL,
    key_version     integer NOT NULL DEFAULT 1,
    created_by      text,
    updated_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name)
);

-- One row per secret value read: by whom (api_key:<id> or worker:<id>), for which execution, why.
CREATE TABLE IF NOT EXISTS secret_access_log (
    id              bigserial PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    secret_name     text NOT NULL,
    accessor        text NOT NULL,
    execution_id    uuid,
    purpose         text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS secret_access_log_org ON secret_access_log (organization_id, at, id);

CREATE TABLE IF NOT EXISTS custom_integrations (
    id               uuid PRIMARY KEY,
    organization_id  text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name             text NOT NULL,
    integration_type text NOT NULL,
    description      text,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'deleted')),
    config           jsonb NOT NULL DEFAULT '{}',
    tags             jsonb NOT NULL DEFAULT '[]',
    last_test        jsonb,
    created_by       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- A soft-deleted integration gives its name back.
CREATE UNIQUE INDEX IF NOT EXISTS custom_integrations_name ON custom_integrations (organization_id, name)
    WHERE status <> 'deleted';
CREATE INDEX IF NOT EXISTS custom_integrations_org ON custom_integrations (organization_id, created_at, id);
