-- Foreign keys for the references that had none while teams did not exist: an agent's team,
-- a project's teams and a project's agents.
--
-- Nothing enforced these before, so a database may hold references to nothing: team ids set on
-- agents or added to projects before this release (there was no team they could name), and
-- project memberships of agents deleted outside the API. They are removed first, explicitly:
-- an agent keeps itself and loses the team id; a membership of nothing is deleted.
UPDATE agents SET team_id = NULL
    WHERE team_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM teams t WHERE t.id = agents.team_id);
DELETE FROM project_teams pt WHERE NOT EXISTS (SELECT 1 FROM teams t WHERE t.id = pt.team_id);
DELETE FROM project_agents pa WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.id = pa.agent_id);

ALTER TABLE agents ADD FOREIGN KEY (team_id) REFERENCES teams(id) ON DELETE SET NULL;
ALTER TABLE project_teams ADD FOREIGN KEY (team_id) REFERENCES teams(id) ON DELETE CASCADE;
ALTER TABLE project_agents ADD FOREIGN KEY (agent_id) REFERENCES agents(id) ON DELETE CASCADE;
-- Deleting a team finds its agents and project memberships by these (project_agents_agent
-- already serves agents).
CREATE INDEX agents_team ON agents (team_id) WHERE team_id IS NOT NULL;
CREATE INDEX project_teams_team ON project_teams (team_id);
