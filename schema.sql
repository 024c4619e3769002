-- Read models of the control plane. Applied at every start-up, so every statement is idempotent.
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
