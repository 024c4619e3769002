-- Placeholder for a migration reserved by work in flight on another branch: drop this file at
-- merge, when that branch's 0015 lands. (A statement, since asyncpg cannot run a query that is
-- only a comment.)
SELECT 1;
