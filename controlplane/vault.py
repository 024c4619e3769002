"""The secrets vault: AES-256-GCM over the `secrets` table, and the audit of every value read.

- The key is 32 bytes from CONTROLPLANE_SECRET_KEY (base64 or hex). Only the API holds it;
  workers get values over the worker protocol, at run time, for their own executions.
- Each value has its own random 96-bit nonce. The associated data binds a ciphertext to its
  organization and name, so a ciphertext copied onto another row does not decrypt.
- Values are read only through `reveal`, which writes a `secret_access_log` row in the same
  transaction as the read.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controlplane.db import Queryable
from controlplane.errors import Broken, Unavailable

KEY_ENV = "CONTROLPLANE_SECRET_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_VERSION = 1
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME = re.compile(NAME_PATTERN)
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class VaultKeyError(ValueError):
    """CONTROLPLANE_SECRET_KEY is not a 256-bit key."""


class VaultError(Exception):
    """A ciphertext did not decrypt: tampered, moved to another row, or sealed with another key."""


def parse_key(raw: str) -> bytes:
    """32 bytes from 64 hex digits or from base64 (standard or URL-safe alphabet)."""
    text = raw.strip()
    if _HEX.match(text):
        return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise VaultKeyError(
            f"{KEY_ENV} must be a 256-bit key: 64 hex digits or base64 of 32 bytes "
            '(generate one with: python -c "import os,base64;'
            'print(base64.b64encode(os.urandom(32)).decode())")'
        )
    return key


def new_key() -> str:
    """A fresh key in the form CONTROLPLANE_SECRET_KEY takes (base64)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes
    nonce: bytes
    key_version: int = KEY_VERSION


def _aad(organization_id: str, name: str) -> bytes:
    # Neither an org slug nor a secret name can hold NUL, so the pair is unambiguous.
    return f"controlplane-secret\x00{organization_id}\x00{name}".encode()


class Vault:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise VaultKeyError(f"the vault key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, organization_id: str, name: str, value: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, value.encode(), _aad(organization_id, name))
        return Sealed(ciphertext, nonce)

    def open(self, organization_id: str, name: str, ciphertext: bytes, nonce: bytes) -> str:
        try:
            plain = self._aead.decrypt(nonce, ciphertext, _aad(organization_id, name))
        except InvalidTag:
            raise VaultError(
                f"secret '{name}' does not decrypt: it was altered, moved, or sealed with "
                f"another {KEY_ENV}"
            ) from None
        return plain.decode()


@functools.lru_cache(maxsize=4)
def vault_from_key(raw: str) -> Vault:
    return Vault(parse_key(raw))


def vault_or_error(raw_key: str) -> Vault:
    """The configured vault, or the 503 every secrets route answers without one."""
    if not raw_key:
        raise Unavailable(
            f"The secrets vault is not configured: set {KEY_ENV} on the API "
            "(`controlplane dev` generates one in its home)",
            code="CONFIGURATION_ERROR",
        )
    try:
        return vault_from_key(raw_key)
    except VaultKeyError as error:
        raise Unavailable(str(error), code="CONFIGURATION_ERROR") from None


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name)) and len(name) <= 255


@dataclass(frozen=True)
class Reader:
    """Who reads and why, as the audit records it."""

    accessor: str  # api_key:<id> or worker:<id>
    purpose: str
    execution_id: uuid.UUID | None = None


async def reveal(
    db: Queryable, vault: Vault, organization_id: str, names: Sequence[str], reader: Reader
) -> dict[str, str]:
    """The values of the named secrets that exist (absent names are left out), each read
    recorded in `secret_access_log`. Run it inside a transaction so the audit and the read
    stand or fall together."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    rows = await db.fetch(
        "SELECT name, ciphertext, nonce FROM secrets WHERE organization_id = $1 "
        "AND name = ANY($2::text[])",
        organization_id,
        wanted,
    )
    found = {row["name"]: row for row in rows}
    values: dict[str, str] = {}
    for name in wanted:
        row = found.get(name)
        if row is None:
            continue
        try:
            values[name] = vault.open(organization_id, name, row["ciphertext"], row["nonce"])
        except VaultError as error:
            raise Broken(str(error), code="CONFIGURATION_ERROR") from None
    if values:
        await db.executemany(
            "INSERT INTO secret_access_log (organization_id, secret_name, accessor, "
            "execution_id, purpose) VALUES ($1, $2, $3, $4, $5)",
            [
                (organization_id, name, reader.accessor, reader.execution_id, reader.purpose)
                for name in values
            ],
        )
    return values
