-- 0016: lists that stay fast at 100,000 rows per organization (docs/PERFORMANCE.md).
--
-- 1. Row counts kept by triggers, so a page's `total` is read, not counted: the organization's
--    projects, agents, environments, listed (not ephemeral) worker queues and executions, in
--    `row_counts`; and each project's agents and teams, in projects.agent_count / team_count
--    (the Default project holds every agent). Statement triggers with transition tables: a
--    statement that inserts or deletes many rows updates each count once. A count row is locked
--    by the transaction that changes it until that commits, so two transactions that insert
--    into one organization's table queue there for the rest of the shorter one.
-- 2. An index for the filter and order of every list route (listed below each table).
--
-- Numbered 0016 while 0015 is reserved by a branch in progress (jobs); it depends on none of it.

CREATE TABLE row_counts (
    organization_id text NOT NULL,  -- no foreign key: an organization's rows are deleted after it
    resource        text NOT NULL,  -- the table, as crud.fetch_page(counted=...) names it
    n               bigint NOT NULL,
    PRIMARY KEY (organization_id, resource)
);

-- TG_ARGV[0]: the resource counted. Rows are counted per organization; the count rows are
-- taken in organization order, so two statements never wait for each other in a cycle.
CREATE FUNCTION row_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_counts AS c (organization_id, resource, n)
    SELECT organization_id, TG_ARGV[0], count(*) FROM new_rows
    GROUP BY organization_id ORDER BY organization_id
    ON CONFLICT (organization_id, resource) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE FUNCTION row_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_counts AS c (organization_id, resource, n)
    SELECT organization_id, TG_ARGV[0], -count(*) FROM old_rows
    GROUP BY organization_id ORDER BY organization_id
    ON CONFLICT (organization_id, resource) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE TRIGGER projects_counted_insert AFTER INSERT ON projects
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_inserted('projects');
CREATE TRIGGER projects_counted_delete AFTER DELETE ON projects
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_deleted('projects');
CREATE TRIGGER agents_counted_insert AFTER INSERT ON agents
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_inserted('agents');
CREATE TRIGGER agents_counted_delete AFTER DELETE ON agents
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_deleted('agents');
CREATE TRIGGER environments_counted_insert AFTER INSERT ON environments
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_inserted('environments');
CREATE TRIGGER environments_counted_delete AFTER DELETE ON environments
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_deleted('environments');
CREATE TRIGGER executions_counted_insert AFTER INSERT ON executions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_inserted('executions');
CREATE TRIGGER executions_counted_delete AFTER DELETE ON executions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_deleted('executions');

-- Worker queues are listed unless ephemeral, which a rename can change.
CREATE FUNCTION row_counts_worker_queues() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO row_counts AS c (organization_id, resource, n)
        SELECT organization_id, 'worker_queues', count(*) FROM new_rows WHERE NOT ephemeral
        GROUP BY organization_id ORDER BY organization_id
        ON CONFLICT (organization_id, resource) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO row_counts AS c (organization_id, resource, n)
        SELECT organization_id, 'worker_queues', -count(*) FROM old_rows WHERE NOT ephemeral
        GROUP BY organization_id ORDER BY organization_id
        ON CONFLICT (organization_id, resource) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO row_counts AS c (organization_id, resource, n)
        SELECT organization_id, 'worker_queues', sum(delta) FROM (
            SELECT organization_id, 1 AS delta FROM new_rows WHERE NOT ephemeral
            UNION ALL
            SELECT organization_id, -1 FROM old_rows WHERE NOT ephemeral
        ) AS changed
        GROUP BY organization_id HAVING sum(delta) <> 0 ORDER BY organization_id
        ON CONFLICT (organization_id, resource) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER worker_queues_counted_insert AFTER INSERT ON worker_queues
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_worker_queues();
CREATE TRIGGER worker_queues_counted_update AFTER UPDATE ON worker_queues
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION row_counts_worker_queues();
CREATE TRIGGER worker_queues_counted_delete AFTER DELETE ON worker_queues
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION row_counts_worker_queues();

-- The triggers hold their tables against writers until this commits, so the counts start exact.
INSERT INTO row_counts (organization_id, resource, n)
SELECT organization_id, 'projects', count(*) FROM projects GROUP BY organization_id
UNION ALL
SELECT organization_id, 'agents', count(*) FROM agents GROUP BY organization_id
UNION ALL
SELECT organization_id, 'environments', count(*) FROM environments GROUP BY organization_id
UNION ALL
SELECT organization_id, 'executions', count(*) FROM executions GROUP BY organization_id
UNION ALL
SELECT organization_id, 'worker_queues', count(*) FROM worker_queues WHERE NOT ephemeral
GROUP BY organization_id;

-- A project's agents and teams. Membership rows are added and removed, never moved to another
-- project. The projects are locked in id order before they are updated (no wait cycles); a
-- project being deleted with its memberships is no longer there to update.
ALTER TABLE projects
    ADD COLUMN agent_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN team_count bigint NOT NULL DEFAULT 0;

CREATE FUNCTION project_members_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM 1 FROM projects WHERE id IN (SELECT project_id FROM new_rows)
            ORDER BY id FOR NO KEY UPDATE;
        UPDATE projects p SET
            agent_count = p.agent_count + CASE WHEN TG_TABLE_NAME = 'project_agents' THEN d.n ELSE 0 END,
            team_count = p.team_count + CASE WHEN TG_TABLE_NAME = 'project_teams' THEN d.n ELSE 0 END
        FROM (SELECT project_id, count(*) AS n FROM new_rows GROUP BY project_id) AS d
        WHERE p.id = d.project_id;
    ELSE
        PERFORM 1 FROM projects WHERE id IN (SELECT project_id FROM old_rows)
            ORDER BY id FOR NO KEY UPDATE;
        UPDATE projects p SET
            agent_count = p.agent_count - CASE WHEN TG_TABLE_NAME = 'project_agents' THEN d.n ELSE 0 END,
            team_count = p.team_count - CASE WHEN TG_TABLE_NAME = 'project_teams' THEN d.n ELSE 0 END
        FROM (SELECT project_id, count(*) AS n FROM old_rows GROUP BY project_id) AS d
        WHERE p.id = d.project_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER project_agents_counted_insert AFTER INSERT ON project_agents
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION project_members_changed();
CREATE TRIGGER project_agents_counted_delete AFTER DELETE ON project_agents
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION project_members_changed();
CREATE TRIGGER project_teams_counted_insert AFTER INSERT ON project_teams
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION project_members_changed();
CREATE TRIGGER project_teams_counted_delete AFTER DELETE ON project_teams
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION project_members_changed();

UPDATE projects p SET agent_count = d.n
FROM (SELECT project_id, count(*) AS n FROM project_agents GROUP BY project_id) AS d
WHERE p.id = d.project_id;
UPDATE projects p SET team_count = d.n
FROM (SELECT project_id, count(*) AS n FROM project_teams GROUP BY project_id) AS d
WHERE p.id = d.project_id;

-- Indexes. Every list is `organization_id = $1` plus its filters, in a fixed order; each index
-- below starts with the equalities and ends with that order, so a page is read from it in order
-- and stops after `limit` rows. Ones already there are named in the comments.

-- GET /projects (created_at, id) [status_filter]
CREATE INDEX projects_org ON projects (organization_id, created_at, id);
CREATE INDEX projects_org_status ON projects (organization_id, status, created_at, id);
-- GET /projects/{id}/agents (added_at, id): the Default project has every agent
CREATE INDEX project_agents_listed ON project_agents (project_id, added_at, id);
-- GET /agents (created_at, id): agents_org; [status_filter]
CREATE INDEX agents_org_status ON agents (organization_id, status, created_at, id);
-- GET /environments (created_at, id) [status_filter]
CREATE INDEX environments_org ON environments (organization_id, created_at, id);
CREATE INDEX environments_org_status ON environments (organization_id, status, created_at, id);
-- GET /worker-queues, GET /workers (created_at, id; ephemeral ones hidden) [status_filter]
CREATE INDEX worker_queues_listed ON worker_queues (organization_id, created_at, id)
    WHERE NOT ephemeral;
CREATE INDEX worker_queues_listed_status ON worker_queues (organization_id, status, created_at, id)
    WHERE NOT ephemeral;
-- GET /environments/{id}/worker-queues [status_filter]
CREATE INDEX worker_queues_env_listed ON worker_queues (environment_id, created_at, id)
    WHERE NOT ephemeral;
CREATE INDEX worker_queues_env_listed_status
    ON worker_queues (environment_id, status, created_at, id) WHERE NOT ephemeral;
-- GET /worker-queues/{id}/workers (registered_at DESC, id)
CREATE INDEX workers_queue_listed ON workers (worker_queue_id, registered_at DESC, id);
-- GET /executions (created_at DESC, id) [status_filter or status] [execution_type] [entity_id];
-- a combination of filters reads the index of one and checks the others. This replaces
-- executions_org (created_at, id ascending), which nothing reads in that order.
CREATE INDEX executions_org_newest ON executions (organization_id, created_at DESC, id);
DROP INDEX executions_org;
CREATE INDEX executions_org_status ON executions (organization_id, status, created_at DESC, id);
CREATE INDEX executions_org_type
    ON executions (organization_id, execution_type, created_at DESC, id);
CREATE INDEX executions_org_entity ON executions (organization_id, entity_id, created_at DESC, id);
-- GET /skills (created_at, id): skills_org; [type] [enabled]
CREATE INDEX skills_org_type ON skills (organization_id, skill_type, created_at, id);
CREATE INDEX skills_org_enabled ON skills (organization_id, enabled, created_at, id);
-- GET /policies (created_at, id): policies_org; [enabled] (search is a substring match)
CREATE INDEX policies_org_enabled ON policies (organization_id, enabled, created_at, id);
-- GET /policies/associations (created_at, id): policy_associations_org; [entity_type
-- [entity_id]] [policy_id] [enabled]. The first replaces policy_associations_entity, its prefix.
CREATE INDEX policy_associations_entity_listed
    ON policy_associations (organization_id, entity_type, entity_id, created_at, id);
DROP INDEX policy_associations_entity;
CREATE INDEX policy_associations_policy_listed
    ON policy_associations (policy_id, created_at, id);
CREATE INDEX policy_associations_org_enabled
    ON policy_associations (organization_id, enabled, created_at, id);
-- GET /custom-integrations (created_at, id): custom_integrations_org; [integration_type] [status]
CREATE INDEX custom_integrations_org_type
    ON custom_integrations (organization_id, integration_type, created_at, id);
CREATE INDEX custom_integrations_org_status
    ON custom_integrations (organization_id, status, created_at, id);
-- GET /secrets/access-log (at DESC, id DESC): secret_access_log_org; [secret_name] [execution_id]
CREATE INDEX secret_access_log_org_secret
    ON secret_access_log (organization_id, secret_name, at, id);
CREATE INDEX secret_access_log_org_execution
    ON secret_access_log (organization_id, execution_id, at, id);
-- Already served: GET /api-keys (api_keys_org), GET /secrets (name: the unique (organization_id,
-- name)), GET /skills/associations (skill_associations_entity). GET /models reads the global
-- catalogue and the organization's own models, a few dozen rows.
