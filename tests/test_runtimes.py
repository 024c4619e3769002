"""`/api/v1/runtimes` (reference §3.6, §7.1) and the runtime/model compatibility rule."""

from __future__ import annotations

from typing import Any

import httpx

from controlplane.models import RUNTIMES, compatibility_errors, resolve_model
from tests.conftest import Tenant, assert_error
from tests.resource_helpers import assert_not_found, assert_validation

REQUIREMENT_FIELDS = {
    "model_requirement",
    "required_config_fields",
    "recommended_config_fields",
    "max_history_length",
    "requires_system_prompt",
    "requires_tools",
}


async def validate(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/runtimes/validate", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    assert set(result) == {"valid", "errors"}
    assert result["valid"] is (result["errors"] == [])
    return result


async def add_model(client: httpx.AsyncClient, value: str, provider: str, **fields: Any) -> None:
    r = await client.post(
        "/api/v1/models", json={"value": value, "label": value, "provider": provider, **fields}
    )
    assert r.status_code == 201, r.text


async def test_list(tenant: Tenant) -> None:
    r = await tenant.viewer.get("/api/v1/runtimes")
    assert r.status_code == 200, r.text
    runtimes = r.json()
    assert [rt["id"] for rt in runtimes] == ["default", "claude_code"]
    default, claude_code = runtimes
    for runtime in runtimes:
        assert set(runtime) == {
            "id",
            "name",
            "description",
            "icon",
            "features",
            "status",
            "requirements",
        }
        assert set(runtime["requirements"]) == REQUIREMENT_FIELDS
        assert "streaming" in runtime["features"]
    assert default["status"] == "available"
    assert "agno" not in (default["name"] + default["description"]).lower()
    assert "Anthropic Messages" in default["description"]
    assert (claude_code["name"], claude_code["icon"], claude_code["status"]) == (
        "Claude Code SDK",
        "code",
        "beta",
    )
    one = await tenant.viewer.get("/api/v1/runtimes/claude_code")
    assert one.json() == claude_code


async def test_requirements(tenant: Tenant) -> None:
    r = await tenant.viewer.get("/api/v1/runtimes/claude_code/requirements")
    assert r.status_code == 200, r.text
    requirements = r.json()
    assert set(requirements) == REQUIREMENT_FIELDS
    assert set(requirements["model_requirement"]) == {
        "description",
        "supported_providers",
        "supported_families",
        "examples",
    }
    assert requirements["model_requirement"]["supported_providers"] == ["anthropic"]
    assert requirements["model_requirement"]["supported_families"] == ["claude"]
    assert requirements["recommended_config_fields"] == ["timeout", "max_tokens"]
    assert requirements["max_history_length"] == 200
    default = (await tenant.viewer.get("/api/v1/runtimes/default/requirements")).json()
    assert default["max_history_length"] == 100
    assert default["requires_system_prompt"] is False
    for path in ["/api/v1/runtimes/agno/requirements", "/api/v1/runtimes/agno"]:
        assert_not_found(await tenant.viewer.get(path), "agno")


MATRIX: list[tuple[str, str | None, bool]] = [
    ("default", "anthropic/claude-sonnet-4-5", True),
    ("claude_code", "anthropic/claude-sonnet-4-5", True),
    ("claude_code", "anthropic/claude-3-5-haiku", True),
    ("default", "kubiya/claude-sonnet-4", True),
    ("default", "openai/gpt-4o", True),
    ("claude_code", "openai/gpt-4o", False),
    ("claude_code", "anthropic/other-model", False),
    ("claude_code", "openai/claude-lookalike", False),
    ("default", "anthropic/claude-nope", False),
    ("claude_code", "anthropic/claude-nope", False),
    ("default", "openai/disabled", False),
    ("agno", "anthropic/claude-sonnet-4-5", False),
    ("default", None, True),
    ("claude_code", None, True),
]


async def test_validate_matrix(tenant: Tenant) -> None:
    await add_model(tenant.member, "openai/gpt-4o", "openai")
    await add_model(tenant.member, "anthropic/other-model", "anthropic")
    await add_model(tenant.member, "openai/claude-lookalike", "openai")
    await add_model(tenant.member, "openai/disabled", "openai", enabled=False)
    for runtime, model, valid in MATRIX:
        body: dict[str, Any] = {"runtime_type": runtime}
        if model is not None:
            body["model_id"] = model
        result = await validate(tenant.viewer, **body)
        assert result["valid"] is valid, (runtime, model, result)


async def test_validate_lists_every_problem(tenant: Tenant, other_tenant: Tenant) -> None:
    await add_model(tenant.member, "openai/gpt-4o", "openai")
    result = await validate(
        tenant.viewer,
        runtime_type="claude_code",
        model_id="openai/gpt-4o",
        agent_config={"timeout": -5, "max_tokens": "lots", "one_shot": "yes"},
        system_prompt="You help.",
    )
    errors = result["errors"]
    assert len(errors) == 5, errors
    assert any("anthropic" in e for e in errors) and any("Claude" in e for e in errors)
    assert any("timeout" in e for e in errors) and any("max_tokens" in e for e in errors)
    assert any("one_shot" in e for e in errors)
    unknown = await validate(tenant.viewer, runtime_type="default", model_id="acme/nothing")
    assert unknown["errors"] == ["Model 'acme/nothing' is not in the model catalogue"]
    # Another organization's model is unknown here.
    theirs = await validate(other_tenant.viewer, runtime_type="default", model_id="openai/gpt-4o")
    assert theirs["valid"] is False
    ok = await validate(
        tenant.viewer,
        runtime_type="claude_code",
        model_id="anthropic/claude-haiku-4-5",
        agent_config={"timeout": 30, "max_tokens": 4096, "one_shot": True},
    )
    assert ok == {"valid": True, "errors": []}


async def test_validate_bad_input(tenant: Tenant, anonymous: httpx.AsyncClient) -> None:
    assert_validation(
        await tenant.viewer.post("/api/v1/runtimes/validate", json={}), "runtime_type"
    )
    assert_validation(
        await tenant.viewer.post(
            "/api/v1/runtimes/validate", json={"runtime_type": "default", "agent_config": []}
        ),
        "agent_config",
    )
    bad = await tenant.viewer.post("/api/v1/runtimes/validate", content=b"{")
    assert_error(bad, 400, "BAD_REQUEST")
    for response in [
        await anonymous.get("/api/v1/runtimes"),
        await anonymous.post("/api/v1/runtimes/validate", json={"runtime_type": "default"}),
    ]:
        assert_error(response, 401, "AUTHENTICATION_ERROR")


async def test_compatibility_function(db: Any, tenant: Tenant) -> None:
    sonnet = await resolve_model(db, tenant.id, "anthropic/claude-sonnet-4-5")
    assert sonnet is not None
    for runtime in RUNTIMES:
        assert compatibility_errors(runtime, sonnet) == []
    assert compatibility_errors("agno", sonnet)[0].startswith("Unknown runtime 'agno'")
    # A model may leave a runtime out of its compatible_runtimes.
    await add_model(
        tenant.member, "anthropic/claude-default-only", "anthropic", compatible_runtimes=["default"]
    )
    only = await resolve_model(db, tenant.id, "anthropic/claude-default-only")
    assert only is not None
    assert compatibility_errors("default", only) == []
    assert (
        "not compatible with runtime 'claude_code'" in compatibility_errors("claude_code", only)[0]
    )
