-- Placeholder on the `webhooks` branch only: 0011 is reserved for another branch's migration,
-- and migrations must be numbered without gaps. Drop this file when that migration merges.
SELECT 1;
