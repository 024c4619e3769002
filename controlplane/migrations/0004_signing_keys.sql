-- The key pairs that sign the JWTs Temporal's authorizer checks (JWKS at /.well-known/jwks.json).
-- The private key is sealed with the vault key when the API has one. (IF NOT EXISTS: see 0002.)
CREATE TABLE IF NOT EXISTS signing_keys (
    kid          text PRIMARY KEY,
    algorithm    text NOT NULL,
    public_jwk   jsonb NOT NULL,
    private_pem  bytea NOT NULL,
    nonce        bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);
