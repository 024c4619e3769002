-- A team execution's member runs point at it; deleting the parent deletes them.
ALTER TABLE executions ADD COLUMN parent_execution_id uuid
    REFERENCES executions(id) ON DELETE CASCADE;
CREATE INDEX executions_parent ON executions (parent_execution_id)
    WHERE parent_execution_id IS NOT NULL;
