-- Jobs (controlplane/jobs/): an agent, team or workflow run on a cron schedule, by an inbound
-- webhook, or by hand. A cron job's schedule is a Temporal Schedule `job-{id}` in the control
-- plane's namespace; this row is what it runs.
--
-- `entity_id` and `worker_queue_id` carry no foreign key: the entity is one of three tables,
-- and a queue (or environment) deleted under a job must not be blocked by it. Both are checked
-- when the job is written and again at every run, which fails clearly if they are gone.
CREATE TABLE jobs (
    id                       uuid PRIMARY KEY,
    organization_id          text NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                     text NOT NULL,
    description              text,
    enabled                  boolean NOT NULL DEFAULT true,
    trigger_type             text NOT NULL CHECK (trigger_type IN ('cron', 'webhook', 'manual')),
    cron_schedule            text,
    cron_timezone            text,
    entity_type              text NOT NULL CHECK (entity_type IN ('agent', 'team', 'workflow')),
    entity_id                uuid NOT NULL,
    entity_name              text,
    prompt_template          text NOT NULL,
    worker_queue_id          uuid NOT NULL,
    execution_environment    jsonb NOT NULL DEFAULT '{}',
    -- Webhook jobs: the unguessable path of POST /api/v1/jobs/webhook/{path}, and the HMAC key
    -- sealed by the vault (shown once, at create).
    webhook_path             text UNIQUE,
    webhook_secret_ciphertext bytea,
    webhook_secret_nonce     bytea,
    webhook_secret_key_version integer,
    -- The role its runs act with: that of the key that last wrote the job (checked then).
    run_as_role              text NOT NULL DEFAULT 'member',
    created_by               text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name),
    CHECK ((trigger_type = 'cron') = (cron_schedule IS NOT NULL)),
    CHECK ((trigger_type = 'webhook') = (webhook_path IS NOT NULL))
);
CREATE INDEX jobs_org ON jobs (organization_id, created_at, id);

-- The job an execution ran for (its `trigger_source` says how it was triggered). A deleted
-- job's executions stay, without it.
ALTER TABLE executions ADD COLUMN job_id uuid REFERENCES jobs(id) ON DELETE SET NULL;
CREATE INDEX executions_job ON executions (job_id, created_at) WHERE job_id IS NOT NULL;
-- A scheduled run's key (its JobRunWorkflow's id): two attempts of one run record one execution.
CREATE UNIQUE INDEX executions_job_run_key ON executions (job_id, (execution_metadata->>'job_run_key'))
    WHERE execution_metadata ? 'job_run_key';
