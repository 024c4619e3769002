"""Settings read from the environment, one frozen object handed to every component."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# A link to the top-level schema.sql, shipped as package data so installed copies find it.
SCHEMA_PATH = Path(__file__).resolve().parent / "schema.sql"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _bool_env(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be true or false, got {raw!r}")


def _secret_key_env() -> str:
    """CONTROLPLANE_SECRET_KEY, checked now so a malformed key stops the API at start-up."""
    raw = os.environ.get("CONTROLPLANE_SECRET_KEY", "").strip()
    if raw:
        from api.vault import VaultKeyError, parse_key

        try:
            parse_key(raw)
        except VaultKeyError as exc:
            raise SystemExit(str(exc)) from None
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    home: Path = field(default_factory=lambda: Path(".controlplane"))
    # The URL workers and generated commands use to reach this API.
    public_url: str = "http://127.0.0.1:8001"
    default_rate_limit_per_minute: int = 100
    max_body_bytes: int = 1024 * 1024
    db_pool_min: int = 2
    db_pool_max: int = 10
    # Rego policies run in process (regorus) unless an OPA server is named here.
    opa_url: str | None = None
    # A policy engine error allows the action when true; by default it denies (fails closed).
    policy_fail_open: bool = False
    # The vault key (base64 or hex of 32 bytes); empty: the secrets routes answer 503.
    secret_key: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": os.environ.get("DATABASE_URL", ""),
            "temporal_address": os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            "temporal_namespace": os.environ.get("TEMPORAL_NAMESPACE", "default"),
            "home": Path(os.environ.get("CONTROLPLANE_HOME", ".controlplane")),
            "public_url": os.environ.get("CONTROLPLANE_URL", "http://127.0.0.1:8001"),
            "default_rate_limit_per_minute": _int_env("RATE_LIMIT_PER_MINUTE", 100),
            "max_body_bytes": _int_env("MAX_BODY_BYTES", 1024 * 1024),
            "db_pool_min": _int_env("DB_POOL_MIN", 2),
            "db_pool_max": _int_env("DB_POOL_MAX", 10),
            "opa_url": os.environ.get("OPA_URL") or None,
            "policy_fail_open": _bool_env("POLICY_FAIL_OPEN", False),
        }
        if "secret_key" not in overrides:
            values["secret_key"] = _secret_key_env()
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
