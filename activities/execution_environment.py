"""An execution's resolved environment as its worker reads it at run time, and the redaction of
its secret values from anything the worker reports or returns.

`GET /api/v1/executions/{id}/environment` is read inside activities, so secret values never
enter Temporal history: only what the activities return does, and that is redacted.

Redaction covers the encodings a tool prints a secret in without trying to hide it: besides the
raw value, its standard and URL-safe base64 (with and without padding; also the forms it takes
inside a longer base64 string, at each of the three byte alignments, so `base64 <<< "x$TOKEN"` or
a Basic auth header is caught) and its lower- and upper-case hex. A deliberate leak (a cipher, a
reversed string) is not something redaction can stop.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from activities.reporting import ControlPlane

REDACTED = "[REDACTED]"
# Shorter values would redact ordinary words.
MIN_SECRET_LENGTH = 4
# An encoded form shorter than this (the aligned base64 of a 4-character secret can be 3
# characters) would redact random runs of letters; the whole-value forms are always longer.
MIN_ENCODED_LENGTH = 6


def _base64_forms(value: bytes) -> set[str]:
    """The base64 texts that stand for `value`: its whole-value encoding (with and without
    padding) and, for each of the three byte alignments it can take inside a longer encoded
    string, the run of characters that depend on its bytes alone."""
    whole = base64.b64encode(value).decode()
    forms = {whole, whole.rstrip("=")}
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + value).decode()
        # Character k holds bits 6k..6k+5; the secret's bits are 8*offset..8*(offset+len).
        start = -(-4 * offset // 3)
        end = 4 * (offset + len(value)) // 3
        forms.add(encoded[start:end])
    return {form for form in forms if form}


def encoded_forms(value: str) -> set[str]:
    """`value` and the encodings of it that redaction also replaces."""
    raw = value.encode()
    forms = {value, raw.hex(), raw.hex().upper()}
    for form in _base64_forms(raw):
        forms.add(form)
        forms.add(form.replace("+", "-").replace("/", "_"))  # URL-safe alphabet
    return forms


class Redactor:
    """Replaces secret values (and their base64 and hex encodings, see the module docstring) in
    text and in JSON-like values, longest first (so a secret that contains another is replaced
    whole)."""

    def __init__(self, values: Iterable[str]) -> None:
        found = {v for v in values if len(v) >= MIN_SECRET_LENGTH}
        found |= {v.strip() for v in found if len(v.strip()) >= MIN_SECRET_LENGTH}
        forms: set[str] = set()
        for value in found:
            forms |= {f for f in encoded_forms(value) if len(f) >= MIN_ENCODED_LENGTH}
            forms.add(value)
        self.values = sorted(forms, key=len, reverse=True)

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
