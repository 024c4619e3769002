-- The Temporal namespace registered for the organization (NULL: not yet, the API registers it).
-- IF NOT EXISTS here and in 0003-0006: a database set up by the last schema.sql, before
-- migrations, already has these changes, and runs them all the same (it recorded none).
ALTER TABLE organizations ADD COLUMN IF NOT EXISTS temporal_namespace text;
