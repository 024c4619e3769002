"""An execution's resolved environment as its worker reads it at run time, and the redaction of
its secret values from anything the worker reports or returns.

`GET /api/v1/executions/{id}/environment` is read inside activities, so secret values never
enter Temporal history: only what the activities return does, and that is redacted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from activities.reporting import ControlPlane

REDACTED = "[REDACTED]"
# Shorter values would redact ordinary words.
MIN_SECRET_LENGTH = 4


class Redactor:
    """Replaces secret values in text and in JSON-like values, longest first (so a secret that
    contains another is replaced whole)."""

    def __init__(self, values: Iterable[str]) -> None:
        found = {v for v in values if len(v) >= MIN_SECRET_LENGTH}
        found |= {v.strip() for v in found if len(v.strip()) >= MIN_SECRET_LENGTH}
        self.values = sorted(found, key=len, reverse=True)

    def text(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    __call__ = text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


@dataclass
class ExecutionEnvironment:
    """Plain env vars, secret values by name, integration env vars and files, and MCP server
    configs with their templates already rendered."""

    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    integration_env: dict[str, str] = field(default_factory=dict)
    mcp_servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ExecutionEnvironment:
        servers = body.get("mcp_servers")
        files = body.get("files")
        return cls(
            env=_strings(body.get("env")),
            secrets=_strings(body.get("secrets")),
            integration_env=_strings(body.get("integration_env")),
            mcp_servers={
                str(k): dict(v)
                for k, v in (servers.items() if isinstance(servers, Mapping) else [])
                if isinstance(v, Mapping)
            },
            files=[_strings(f) for f in (files if isinstance(files, list) else [])],
        )

    def process_env(self) -> dict[str, str]:
        """What tools see: integration env, then secrets, then the env vars the agent's layers
        set, later winning (the control plane resolves in the same order)."""
        return {**self.integration_env, **self.secrets, **self.env}

    def secret_values(self) -> list[str]:
        values = [*self.secrets.values(), *self.integration_env.values()]
        return values + [f.get("content", "") for f in self.files]


async def fetch_execution_environment(
    control_plane: ControlPlane, execution_id: str
) -> ExecutionEnvironment:
    """The execution's resolved environment, as this worker's token may read it."""
    body = await control_plane.get(f"/api/v1/executions/{execution_id}/environment")
    return ExecutionEnvironment.from_json(body)
