"""Settings read from the environment, one frozen object handed to every component."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The numbered schema migrations (controlplane/schema.py), shipped as package data.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _seconds_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise SystemExit(f"{name} must be a number of seconds, 0 or more, got {raw!r}")
    return seconds


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
        from controlplane.vault import VaultKeyError, parse_key

        try:
            parse_key(raw)
        except VaultKeyError as exc:
            raise SystemExit(str(exc)) from None
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    temporal_address: str = "127.0.0.1:7233"
    # The control plane's own namespace (its internal workflows); each organization's workflows
    # run in a namespace of their own, `temporal_namespace_prefix` + the organization's slug.
    temporal_namespace: str = "default"
    temporal_namespace_prefix: str = "org-"
    # The task queue of the system worker (the control plane's own workflows).
    system_task_queue: str = "controlplane-system"
    temporal_retention_days: int = 7
    # Where workers reach Temporal, when not at `temporal_address` (e.g. a public host name).
    temporal_public_address: str = ""
    # TLS to the Temporal frontend; the CA (PEM file) is also handed to workers at start.
    temporal_tls: bool = False
    temporal_tls_ca_file: str | None = None
    temporal_tls_server_name: str | None = None
    # Lifetime of the JWTs minted for Temporal's authorizer (workers refresh them).
    temporal_token_ttl_seconds: int = 900
    home: Path = field(default_factory=lambda: Path(".controlplane"))
    # The URL workers and generated commands use to reach this API.
    public_url: str = "http://127.0.0.1:8001"
    default_rate_limit_per_minute: int = 100
    # Per worker token: generous, so a healthy worker is never refused a heartbeat.
    worker_rate_limit_per_minute: int = 6000
    # Worker keys and worker tokens minted per organization per minute.
    credential_mint_limit_per_minute: int = 60
    # How long an API process trusts what it read about a key or worker token: a key revoked
    # (a worker disconnected) elsewhere stops working here within this many seconds; 0: never
    # cached.
    auth_cache_seconds: float = 5.0
    max_body_bytes: int = 1024 * 1024
    db_pool_min: int = 2
    db_pool_max: int = 10
    # Rego policies run in process (regorus) unless an OPA server is named here.
    opa_url: str | None = None
    # A policy engine error allows the action when true; by default it denies (fails closed).
    policy_fail_open: bool = False
    # The vault key (base64 or hex of 32 bytes); empty: the secrets routes answer 503.
    secret_key: str = field(default="", repr=False)
    # Task planning: the model the planner calls (a catalogue id or value; empty: each
    # organization's default model), and how long the synchronous planning routes wait.
    planning_model: str = ""
    planning_timeout_seconds: int = 180
    # Outbound webhooks. Receivers on private or loopback addresses only when allowed (the dev
    # stack allows them); link-local and metadata addresses never. A delivery is retried with
    # exponential backoff from the first delay for the window, then given up.
    webhook_allow_private: bool = False
    webhook_first_retry_seconds: int = 5
    webhook_retry_window_seconds: int = 24 * 3600
    # How long announced events and their deliveries log are kept (housekeeping prunes them).
    webhook_log_retention_days: int = 30

    def namespace_for(self, organization_id: str) -> str:
        """The Temporal namespace that holds an organization's workflows."""
        return f"{self.temporal_namespace_prefix}{organization_id}"

    @property
    def worker_temporal_address(self) -> str:
        return self.temporal_public_address or self.temporal_address

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": os.environ.get("DATABASE_URL", ""),
            "temporal_address": os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            "temporal_namespace": os.environ.get("TEMPORAL_NAMESPACE", "default"),
            "temporal_namespace_prefix": os.environ.get("TEMPORAL_NAMESPACE_PREFIX", "org-"),
            "system_task_queue": os.environ.get("SYSTEM_TASK_QUEUE", "controlplane-system"),
            "temporal_retention_days": _int_env("TEMPORAL_RETENTION_DAYS", 7),
            "temporal_public_address": os.environ.get("TEMPORAL_PUBLIC_ADDRESS", ""),
            "temporal_tls": _bool_env("TEMPORAL_TLS", False),
            "temporal_tls_ca_file": os.environ.get("TEMPORAL_TLS_CA_FILE") or None,
            "temporal_tls_server_name": os.environ.get("TEMPORAL_TLS_SERVER_NAME") or None,
            "temporal_token_ttl_seconds": _int_env("TEMPORAL_TOKEN_TTL_SECONDS", 900),
            "home": Path(os.environ.get("CONTROLPLANE_HOME", ".controlplane")),
            "public_url": os.environ.get("CONTROLPLANE_URL", "http://127.0.0.1:8001"),
            "default_rate_limit_per_minute": _int_env("RATE_LIMIT_PER_MINUTE", 100),
            "worker_rate_limit_per_minute": _int_env("WORKER_RATE_LIMIT_PER_MINUTE", 6000),
            "credential_mint_limit_per_minute": _int_env("CREDENTIAL_MINT_LIMIT_PER_MINUTE", 60),
            "auth_cache_seconds": _seconds_env("AUTH_CACHE_SECONDS", 5.0),
            "max_body_bytes": _int_env("MAX_BODY_BYTES", 1024 * 1024),
            "db_pool_min": _int_env("DB_POOL_MIN", 2),
            "db_pool_max": _int_env("DB_POOL_MAX", 10),
            "opa_url": os.environ.get("OPA_URL") or None,
            "policy_fail_open": _bool_env("POLICY_FAIL_OPEN", False),
            "planning_model": os.environ.get("PLANNING_MODEL", "").strip(),
            "planning_timeout_seconds": _int_env("PLANNING_TIMEOUT_SECONDS", 180),
            "webhook_allow_private": _bool_env("CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE", False),
            "webhook_first_retry_seconds": _int_env("CONTROLPLANE_WEBHOOK_FIRST_RETRY_SECONDS", 5),
            "webhook_retry_window_seconds": _int_env(
                "CONTROLPLANE_WEBHOOK_RETRY_WINDOW_SECONDS", 24 * 3600
            ),
            "webhook_log_retention_days": _int_env("CONTROLPLANE_WEBHOOK_LOG_RETENTION_DAYS", 30),
        }
        if "secret_key" not in overrides:
            values["secret_key"] = _secret_key_env()
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
