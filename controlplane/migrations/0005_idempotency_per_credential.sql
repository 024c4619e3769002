-- Idempotency-Key records are keyed by the credential too, so one key's response is never
-- replayed to another key; a response that carried a credential is not stored (replayable =
-- false). Records made before get credential '' (they expire with the retention anyway).
-- The primary key is rebuilt even where it already has `credential` (see 0002): same result.
ALTER TABLE idempotency_keys
    ADD COLUMN IF NOT EXISTS credential text NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS replayable boolean NOT NULL DEFAULT true,
    DROP CONSTRAINT idempotency_keys_pkey,
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (organization_id, credential, idempotency_key);
