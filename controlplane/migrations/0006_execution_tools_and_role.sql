-- What the control plane decided at start and checks every worker claim against: the tools the
-- run offers, and the role of the key that started it (for `role` policy associations).
-- (IF NOT EXISTS: see 0002.)
ALTER TABLE executions
    ADD COLUMN IF NOT EXISTS tools jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS user_role text;
