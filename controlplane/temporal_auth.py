"""JWTs for Temporal's own authorizer.

In production Temporal runs with its default JWT claim mapper and authorizer
(`authorizer: default`, `claimMapper: default`), reading the public keys from the control plane's
JWKS (`/.well-known/jwks.json`). The control plane signs short-lived tokens whose `permissions`
claim lists `"<namespace>:<role>"` entries: a worker gets `"<its organization's namespace>:worker"`
and nothing else, so it can poll its organization's task queues but can neither read another
organization's workflows nor start any. The control plane's own client gets `"system:admin"`
(it registers namespaces and starts, signals and queries every organization's workflows).

The dev server has no authorizer: there the tokens travel and are ignored, and the namespace
separation is what keeps organizations apart.

The signing key is an RSA key pair kept in Postgres (`signing_keys`), sealed with the vault key
when the API has one, so every API replica signs with the same key.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
from asyncpg.pool import PoolConnectionProxy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from controlplane.vault import Vault

ALGORITHM = "RS256"
PERMISSIONS_CLAIM = "permissions"
CONTROL_PLANE_PERMISSIONS = ("system:admin",)
# Serialises the first start of several API replicas, so they agree on one key.
_KEY_LOCK_ID = 7_233_002
_SEAL_ORG = "controlplane"


def worker_permissions(namespace: str) -> list[str]:
    """What a worker may do: poll and answer tasks in its organization's namespace only."""
    return [f"{namespace}:worker"]


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    public_jwk: dict[str, Any]


@dataclass(frozen=True)
class Token:
    token: str
    expires_at: datetime


def new_signing_key() -> SigningKey:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = uuid.uuid4().hex
    jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return SigningKey(kid, private_key, {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"})


def mint(
    key: SigningKey,
    *,
    subject: str,
    permissions: list[str] | tuple[str, ...],
    ttl_seconds: int,
    issuer: str,
    now: datetime | None = None,
) -> Token:
    issued = now or datetime.now(UTC)
    expires = issued + timedelta(seconds=ttl_seconds)
    claims = {
        "iss": issuer,
        "sub": subject,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()) - 30,  # tolerate clocks a little behind ours
        "exp": int(expires.timestamp()),
        PERMISSIONS_CLAIM: list(permissions),
    }
    token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
    return Token(token, expires)


def jwks(public_jwks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"keys": public_jwks}


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def load_signing_key(
    conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any], vault: Vault | None
) -> SigningKey:
    """The newest signing key this process can open, created on first use. `vault` seals the
    private key at rest; a key sealed under another vault key (or sealed, for a process without
    one) is skipped, and this process makes its own. Every key stays in the JWKS, so tokens of
    any replica verify."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEY_LOCK_ID)
        rows = await conn.fetch(
            "SELECT kid, public_jwk, private_pem, nonce FROM signing_keys "
            "WHERE retired_at IS NULL ORDER BY created_at DESC"
        )
        for row in rows:
            key = _open(row, vault)
            if key is not None:
                return key
        key = new_signing_key()
        stored, nonce = _pem(key.private_key), None
        if vault is not None:
            sealed = vault.seal(_SEAL_ORG, f"signing_key_{key.kid}", stored.decode())
            stored, nonce = sealed.ciphertext, sealed.nonce
        # As text: this runs on pool connections (with a JSON codec) and on the CLI's plain one.
        await conn.execute(
            "INSERT INTO signing_keys (kid, algorithm, public_jwk, private_pem, nonce) "
            "VALUES ($1, $2, $3::text::jsonb, $4, $5)",
            key.kid,
            ALGORITHM,
            json.dumps(key.public_jwk),
            stored,
            nonce,
        )
        return key


def _open(row: asyncpg.Record, vault: Vault | None) -> SigningKey | None:
    pem: bytes = row["private_pem"]
    if (row["nonce"] is None) != (vault is None):
        return None
    if vault is not None:
        try:
            pem = vault.open(_SEAL_ORG, f"signing_key_{row['kid']}", pem, row["nonce"]).encode()
        except Exception:  # sealed under another vault key
            return None
    private_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    return SigningKey(row["kid"], private_key, _jwk(row["public_jwk"]))


def _jwk(value: Any) -> dict[str, Any]:
    loaded = json.loads(value) if isinstance(value, str) else value
    assert isinstance(loaded, dict)
    return loaded


async def published_keys(db: asyncpg.Pool[Any] | asyncpg.Connection[Any]) -> list[dict[str, Any]]:
    """Every public key that may still verify a live token: the current one and, after a
    rotation, the retired ones for one token lifetime."""
    rows = await db.fetch(
        "SELECT public_jwk FROM signing_keys WHERE retired_at IS NULL "
        "OR retired_at > now() - interval '1 day' ORDER BY created_at"
    )
    return [_jwk(row["public_jwk"]) for row in rows]
