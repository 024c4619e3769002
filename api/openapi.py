"""OpenAPI 3.1, generated from the pydantic models in the routes' annotations."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.errors import CODE_BY_STATUS
from api.routing import Endpoint
from controlplane import VERSION

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
REF = "#/components/schemas/{model}"
# An empty path segment matches no route (Starlette redirects it to the path without it).
PATH_PARAMETER = {"type": "string", "minLength": 1}
SIGNATURE_DOC = "`sha256=<hex HMAC-SHA256 of the raw body>`, keyed with the job's webhook secret"


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None
    id: str
    timestamp: str


class ErrorEnvelope(BaseModel):
    error: ErrorBody


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def operation_id(ep: Endpoint) -> str:
    return f"{ep.handler.__module__.rsplit('.', 1)[-1]}_{ep.handler.__name__}"


def build_openapi(endpoints: list[Endpoint]) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(ErrorEnvelope, "serialization")]
    for ep in endpoints:
        if ep.body_model is not None:
            models.append((ep.body_model, "validation"))
        if (response := _model_of(ep.response_model)) is not None:
            models.append((response, "serialization"))
    keys, schema = models_json_schema(models, ref_template=REF)
    components = schema.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(keys[(model, mode)])  # type: ignore[index]

    error_response = {
        "description": "Error",
        "content": {"application/json": {"schema": ref(ErrorEnvelope, "serialization")}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        path = _PATH_PARAM.sub(r"{\1}", ep.path)
        op: dict[str, Any] = {
            "tags": [ep.tag],
            "summary": ep.summary,
            "operationId": operation_id(ep),
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": dict(PATH_PARAMETER)}
                for name in _PATH_PARAM.findall(ep.path)
            ],
            "responses": {},
        }
        if ep.query_model is not None:
            for name, info in ep.query_model.model_fields.items():
                field_schema = ep.query_model.model_json_schema()["properties"][name]
                op["parameters"].append(
                    {
                        "name": name,
                        "in": "query",
                        "required": info.is_required(),
                        "description": info.description or "",
                        "schema": field_schema,
                    }
                )
        if ep.body_model is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(ep.body_model, "validation")}},
            }
        ok: dict[str, Any] = {"description": "Success"}
        if (response := _model_of(ep.response_model)) is not None:
            ok["content"] = {"application/json": {"schema": ref(response, "serialization")}}
        op["responses"][str(ep.status_code)] = ok
        # 503: Postgres or Temporal out of reach, with Retry-After (every route may meet it).
        errors = [400, 404, 422, 500, 503]
        if ep.role is not None:
            errors += [401, 403, 429]
        if ep.body_model is not None:
            errors.append(413)  # the body size cap
        if ep.method != "GET":
            errors.append(409)  # a conflicting write, or an Idempotency-Key in use
        for status in sorted(errors):
            op["responses"][str(status)] = error_response | {"description": CODE_BY_STATUS[status]}
        for status, description in ep.extra_responses.items():
            op["responses"][str(status)] = error_response | {"description": description}
        if ep.role is not None:
            op["security"] = [{"bearerAuth": []}]
        elif ep.signed_body:
            op["security"] = [{"webhookSignature": []}, {"githubSignature": []}]
        paths.setdefault(path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent Control Plane API",
            "version": VERSION,
            "description": "Self-hostable control plane for AI agents (Kubiya Control Plane API "
            "v0.3.0). Authenticate with `Authorization: Bearer <API key>`. Every string and "
            "object key must be free of NUL and lone surrogates, every number finite and within "
            "a 64-bit integer's range, and JSON at most 64 levels deep; the schemas below do not "
            "repeat it.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Webhook-Signature",
                    "description": SIGNATURE_DOC,
                },
                "githubSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Hub-Signature-256",
                    "description": SIGNATURE_DOC + " (GitHub's header)",
                },
            },
        },
    }
