"""`/api/v1/models` (reference §3.11) and `resolve_model`."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from controlplane.models import resolve_model
from tests.conftest import Tenant, assert_error
from tests.resource_helpers import (
    assert_all_not_found,
    assert_not_found,
    assert_validation,
    check_pagination,
    rows_of,
)

MODEL_FIELDS = {
    "id",
    "organization_id",
    "value",
    "label",
    "provider",
    "api_model",
    "model_type",
    "logo",
    "description",
    "enabled",
    "recommended",
    "compatible_runtimes",
    "capabilities",
    "pricing",
    "display_order",
    "created_at",
    "updated_at",
}
CATALOGUE = {
    "anthropic/claude-sonnet-4-5": (3, 15),
    "anthropic/claude-opus-4-5": (5, 25),
    "anthropic/claude-haiku-4-5": (1, 5),
    "anthropic/claude-opus-4-1": (15, 75),
    "anthropic/claude-sonnet-4": (3, 15),
    "anthropic/claude-3-5-haiku": (0.8, 4),
}
SONNET = "anthropic/claude-sonnet-4-5"


async def create(client: httpx.AsyncClient, value: str, **fields: Any) -> dict[str, Any]:
    body = {"value": value, "label": value.split("/")[-1], "provider": value.split("/")[0]}
    r = await client.post("/api/v1/models", json=body | fields)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def global_rows(db: asyncpg.Pool[Any]) -> list[dict[str, Any]]:
    records = await db.fetch("SELECT * FROM llm_models WHERE organization_id IS NULL ORDER BY id")
    return [dict(record) for record in records]


async def test_the_seeded_catalogue(tenant: Tenant) -> None:
    r = await tenant.viewer.get("/api/v1/models")
    assert r.status_code == 200, r.text
    page = r.json()
    assert (page["total"], page["limit"], page["offset"]) == (len(CATALOGUE), 50, 0)
    models = page["items"]
    assert models[0]["value"] == SONNET
    assert {m["value"] for m in models} == set(CATALOGUE)
    orders = [m["display_order"] for m in models]
    assert orders == sorted(orders)
    for model in models:
        assert set(model) == MODEL_FIELDS
        assert model["organization_id"] is None
        assert model["provider"] == "anthropic"
        assert model["enabled"] is True
        assert model["compatible_runtimes"] == ["default", "claude_code"]
        assert model["model_type"] == "text-generation"
        price_in, price_out = CATALOGUE[model["value"]]
        assert model["pricing"] == {
            "input_per_million": price_in,
            "output_per_million": price_out,
            "currency": "USD",
        }
        assert model["capabilities"]["tools"] is True
        assert model["recommended"] is (model["value"] == SONNET)


async def test_get_by_value_with_a_slash_or_by_id(tenant: Tenant) -> None:
    r = await tenant.viewer.get(f"/api/v1/models/{SONNET}")
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["value"] == SONNET
    by_id = await tenant.viewer.get(f"/api/v1/models/{model['id']}")
    assert by_id.json() == model
    # An encoded slash names the same model; Kubiya's `kubiya/` ids name ours.
    assert (await tenant.viewer.get("/api/v1/models/anthropic%2Fclaude-sonnet-4-5")).json() == model
    kubiya = await tenant.viewer.get("/api/v1/models/kubiya/claude-sonnet-4")
    assert kubiya.json()["value"] == "anthropic/claude-sonnet-4"
    for missing in ["anthropic/claude-nope", "nope", str(uuid.uuid4())]:
        assert_not_found(await tenant.viewer.get(f"/api/v1/models/{missing}"), missing)


async def test_default_and_providers(tenant: Tenant, other_tenant: Tenant) -> None:
    r = await tenant.viewer.get("/api/v1/models/default")
    assert r.status_code == 200, r.text
    assert r.json()["value"] == SONNET
    r = await tenant.viewer.get("/api/v1/models/providers")
    assert r.status_code == 200, r.text
    assert r.json() == [{"provider": "anthropic", "model_count": len(CATALOGUE)}]

    await create(tenant.member, "openai/gpt-4o", recommended=True)
    await create(tenant.member, "openai/gpt-old", enabled=False)
    assert (await tenant.viewer.get("/api/v1/models/default")).json()["value"] == "openai/gpt-4o"
    assert (await tenant.viewer.get("/api/v1/models/providers")).json() == [
        {"provider": "anthropic", "model_count": len(CATALOGUE)},
        {"provider": "openai", "model_count": 1},
    ]
    everything = await tenant.viewer.get("/api/v1/models/providers?enabled_only=false")
    assert everything.json()[1] == {"provider": "openai", "model_count": 2}
    # Another organization sees neither.
    assert (await other_tenant.viewer.get("/api/v1/models/default")).json()["value"] == SONNET
    assert len((await other_tenant.viewer.get("/api/v1/models/providers")).json()) == 1


async def test_create_an_own_model(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    model = await create(
        tenant.member,
        "openai/gpt-4o",
        label="GPT-4o",
        logo="openai",
        description="OpenAI's model",
        capabilities={"vision": True},
        pricing={"input_per_million": 2.5, "output_per_million": 10},
        display_order=5,
    )
    assert set(model) == MODEL_FIELDS
    assert model["organization_id"] == tenant.id
    assert (model["label"], model["provider"], model["logo"]) == ("GPT-4o", "openai", "openai")
    assert model["compatible_runtimes"] == ["default"]  # claude_code runs only Claude models
    assert model["pricing"] == {
        "input_per_million": 2.5,
        "output_per_million": 10.0,
        "currency": "USD",
    }
    assert (model["enabled"], model["recommended"], model["model_type"]) == (
        True,
        False,
        "text-generation",
    )
    claude = await create(tenant.member, "anthropic/claude-custom")
    assert claude["compatible_runtimes"] == ["default", "claude_code"]
    assert claude["pricing"] is None
    page = (await tenant.viewer.get("/api/v1/models")).json()
    assert page["items"][0]["id"] == model["id"]  # display_order 5 sorts first
    assert page["total"] == len(CATALOGUE) + 2
    stored = await db.fetchval(
        "SELECT created_by FROM llm_models WHERE id = $1", uuid.UUID(model["id"])
    )
    assert stored.startswith("api_key:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": "L", "provider": "p"}, "value"),
        ({"value": "p/m", "provider": "p"}, "label"),
        ({"value": "p/m", "label": "L"}, "provider"),
        ({"value": "has space", "label": "L", "provider": "p"}, "value"),
        ({"value": "p/m", "label": "L", "provider": "Bad Provider"}, "provider"),
        ({"value": "p/m", "label": "L", "provider": "p", "compatible_runtimes": ["agno"]},
         "compatible_runtimes.0"),
        ({"value": "p/m", "label": "L", "provider": "p", "enabled": "sometimes"}, "enabled"),
        ({"value": "p/m", "label": "L", "provider": "p",
          "pricing": {"input_per_million": -1, "output_per_million": 1}},
         "pricing.input_per_million"),
        ({"value": "p/m", "label": "L", "provider": "p",
          "pricing": {"input_per_million": 1, "output_per_million": 1, "currency": "EUR"}},
         "pricing.currency"),
        ({"value": "p/m", "label": "L", "provider": "p", "capabilities": []}, "capabilities"),
    ],
)  # fmt: skip
async def test_create_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    assert_validation(await tenant.member.post("/api/v1/models", json=body), field)
    assert await rows_of(db, "llm_models", tenant.id) == []


async def test_incompatible_runtimes_are_refused(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    r = await tenant.member.post(
        "/api/v1/models",
        json={
            "value": "openai/gpt-4o",
            "label": "GPT",
            "provider": "openai",
            "compatible_runtimes": ["default", "claude_code"],
        },
    )
    error = assert_error(r, 400, "BAD_REQUEST")
    assert len(error["details"]["errors"]) == 2  # not anthropic, not a Claude model
    assert await rows_of(db, "llm_models", tenant.id) == []
    malformed = await tenant.member.post("/api/v1/models", content=b"{nope")
    assert_error(malformed, 400, "BAD_REQUEST")
    assert await rows_of(db, "llm_models", tenant.id) == []


async def test_value_is_unique_among_visible_models(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    await create(tenant.member, "openai/gpt-4o")
    before = await rows_of(db, "llm_models", tenant.id)
    for value in ["openai/gpt-4o", SONNET]:
        r = await tenant.member.post(
            "/api/v1/models", json={"value": value, "label": "L", "provider": "openai"}
        )
        assert_error(r, 409, "RESOURCE_CONFLICT")
    assert await rows_of(db, "llm_models", tenant.id) == before
    await create(other_tenant.member, "openai/gpt-4o")


async def test_own_models_are_invisible_to_other_organizations(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create(other_tenant.member, "openai/secret-model")
    before = await rows_of(db, "llm_models", other_tenant.id)
    listed = (await tenant.viewer.get("/api/v1/models?enabled_only=false&limit=1000")).json()
    assert theirs["id"] not in {m["id"] for m in listed["items"]}
    assert listed["total"] == len(CATALOGUE)

    async def get(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/models/{ident}")

    async def patch(ident: str) -> httpx.Response:
        return await tenant.admin.patch(f"/api/v1/models/{ident}", json={"label": "Mine"})

    async def put(ident: str) -> httpx.Response:
        return await tenant.admin.put(f"/api/v1/models/{ident}", json={"label": "Mine"})

    async def delete(ident: str) -> httpx.Response:
        return await tenant.admin.delete(f"/api/v1/models/{ident}")

    for request in (get, patch, put, delete):
        await assert_all_not_found(request, theirs["id"], extra=(theirs["value"],))
    assert await rows_of(db, "llm_models", other_tenant.id) == before
    assert await resolve_model(db, tenant.id, theirs["value"]) is None
    assert await resolve_model(db, tenant.id, theirs["id"]) is None


async def test_global_models_are_read_only(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    before = await global_rows(db)
    model = (await tenant.viewer.get(f"/api/v1/models/{SONNET}")).json()
    for ident in (SONNET, model["id"]):
        url = f"/api/v1/models/{ident}"
        for response in [
            await tenant.admin.patch(url, json={"label": "Mine"}),
            await tenant.admin.put(url, json={"label": "Mine"}),
            await tenant.admin.delete(url),
        ]:
            error = assert_error(response, 403, "AUTHORIZATION_ERROR")
            assert "global catalogue" in error["message"] and "read-only" in error["message"]
    assert await global_rows(db) == before


async def test_patch_and_put_change_only_the_fields_sent(
    db: asyncpg.Pool[Any], tenant: Tenant
) -> None:
    model = await create(
        tenant.member,
        "anthropic/claude-custom",
        description="d",
        pricing={"input_per_million": 1, "output_per_million": 2},
    )
    url = f"/api/v1/models/{model['value']}"
    r = await tenant.member.patch(url, json={"label": "Custom", "recommended": True})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["label"], patched["recommended"]) == ("Custom", True)
    assert patched["updated_at"] > model["updated_at"]
    unchanged = {"label", "recommended", "updated_at"}
    assert {k: v for k, v in patched.items() if k not in unchanged} == {
        k: v for k, v in model.items() if k not in unchanged
    }
    r = await tenant.member.put(f"/api/v1/models/{model['id']}", json={"pricing": None})
    assert r.status_code == 200, r.text
    assert r.json()["pricing"] is None and r.json()["label"] == "Custom"

    before = await rows_of(db, "llm_models", tenant.id)
    for body in [{"label": None}, {"enabled": None}, {"compatible_runtimes": ["x"]}]:
        assert_validation(await tenant.member.patch(url, json=body))
    # Moving a model to another provider must not leave claude_code among its runtimes.
    error = assert_error(await tenant.member.patch(url, json={"provider": "openai"}), 400)
    assert "anthropic" in error["details"]["errors"][0]
    assert_error(await tenant.member.patch(url, json={"value": SONNET}), 409, "RESOURCE_CONFLICT")
    assert await rows_of(db, "llm_models", tenant.id) == before
    r = await tenant.member.patch(
        url, json={"provider": "openai", "compatible_runtimes": ["default"]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["compatible_runtimes"] == ["default"]


async def test_renaming_a_model_keeps_its_agents(tenant: Tenant) -> None:
    model = await create(tenant.member, "anthropic/claude-custom")
    r = await tenant.member.post(
        "/api/v1/agents", json={"name": "a", "model_id": "anthropic/claude-custom"}
    )
    assert r.status_code == 201, r.text
    agent = r.json()
    r = await tenant.member.patch(
        f"/api/v1/models/{model['id']}", json={"value": "anthropic/claude-renamed"}
    )
    assert r.status_code == 200, r.text
    again = (await tenant.viewer.get(f"/api/v1/agents/{agent['id']}")).json()
    assert again["model_id"] == "anthropic/claude-renamed"


async def test_delete(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    used = await create(tenant.member, "anthropic/claude-used")
    r = await tenant.member.post(
        "/api/v1/agents", json={"name": "user", "model": "anthropic/claude-used"}
    )
    assert r.status_code == 201, r.text
    before = await rows_of(db, "llm_models", tenant.id)
    error = assert_error(
        await tenant.member.delete(f"/api/v1/models/{used['value']}"), 409, "RESOURCE_CONFLICT"
    )
    assert error["details"]["agents"] == ["user"]
    assert await rows_of(db, "llm_models", tenant.id) == before

    model = await create(tenant.member, "openai/doomed")
    r = await tenant.member.delete(f"/api/v1/models/{model['value']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": model["id"], "deleted": True}
    assert_not_found(await tenant.viewer.get(f"/api/v1/models/{model['id']}"), model["id"])
    assert_not_found(await tenant.member.delete(f"/api/v1/models/{model['id']}"), model["id"])


async def test_viewer_cannot_write(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    model = await create(tenant.member, "openai/guarded")
    before = await rows_of(db, "llm_models", tenant.id)
    url = f"/api/v1/models/{model['value']}"
    for response in [
        await tenant.viewer.post(
            "/api/v1/models", json={"value": "v/v", "label": "v", "provider": "v"}
        ),
        await tenant.viewer.patch(url, json={"label": "V"}),
        await tenant.viewer.put(url, json={"label": "V"}),
        await tenant.viewer.delete(url),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await rows_of(db, "llm_models", tenant.id) == before


async def test_filters(tenant: Tenant) -> None:
    gpt = await create(tenant.member, "openai/gpt-4o", display_order=1)
    off = await create(tenant.member, "openai/gpt-off", enabled=False)
    embed = await create(tenant.member, "openai/embed", model_type="embedding")

    async def values(params: str) -> list[str]:
        r = await tenant.viewer.get(f"/api/v1/models?limit=1000&{params}")
        assert r.status_code == 200, r.text
        return [m["value"] for m in r.json()["items"]]

    enabled = await values("")
    assert off["value"] not in enabled and gpt["value"] in enabled
    assert enabled == await values("enabled_only=true")
    assert off["value"] in await values("enabled_only=false")
    assert await values("recommended=true") == [SONNET]
    assert SONNET not in await values("recommended=false")
    assert await values("provider=openai") == [gpt["value"], embed["value"]]
    assert await values("provider=openai&enabled_only=false") == [
        gpt["value"],
        embed["value"],
        off["value"],
    ]
    claude_code = await values("runtime=claude_code")
    assert set(claude_code) == set(CATALOGUE)
    assert set(await values("runtime=default")) == set(CATALOGUE) | {gpt["value"], embed["value"]}
    assert await values("type=embedding") == [embed["value"]]
    for bad, field in [
        ("runtime=agno", "runtime"),
        ("enabled_only=maybe", "enabled_only"),
        ("recommended=2", "recommended"),
    ]:
        assert_validation(await tenant.viewer.get(f"/api/v1/models?{bad}"), field)


async def test_pagination(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    await create(tenant.member, "openai/b", display_order=1000)
    await create(tenant.member, "openai/a", display_order=1000)
    records = await db.fetch(
        "SELECT id FROM llm_models WHERE (organization_id IS NULL OR organization_id = $1) "
        "AND enabled ORDER BY display_order, value, id",
        tenant.id,
    )
    expected = [str(record["id"]) for record in records]
    assert len(expected) == len(CATALOGUE) + 2
    await check_pagination(tenant.viewer, "/api/v1/models", expected)


async def test_unknown_paths_under_models(tenant: Tenant) -> None:
    # Only GET is served at /models/default; other methods fall through to the model path.
    assert_not_found(await tenant.member.patch("/api/v1/models/default", json={}), "default")
    assert_not_found(await tenant.viewer.get("/api/v1/models/providers/x"), "providers/x")


async def test_resolve_model(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    sonnet = await resolve_model(db, tenant.id, SONNET)
    assert sonnet is not None
    assert (sonnet.value, sonnet.provider, sonnet.api_model) == (
        SONNET,
        "anthropic",
        "claude-sonnet-4-5",
    )
    assert sonnet.compatible_runtimes == ("default", "claude_code")
    assert sonnet.pricing is not None and sonnet.pricing.input_per_million == 3
    assert sonnet.cost_usd(1_000_000, 100_000) == pytest.approx(4.5)
    assert sonnet.organization_id is None
    by_id = await resolve_model(db, tenant.id, str(sonnet.id))
    assert by_id == sonnet
    older = await resolve_model(db, tenant.id, "anthropic/claude-sonnet-4")
    assert older is not None and older.api_model == "claude-sonnet-4-20250514"
    assert await resolve_model(db, tenant.id, "anthropic/claude-nope") is None
    own = await create(tenant.member, "acme/model-x", api_model="x-2025")
    resolved = await resolve_model(db, tenant.id, own["value"])
    assert resolved is not None
    assert (resolved.api_model, resolved.pricing, resolved.organization_id) == (
        "x-2025",
        None,
        tenant.id,
    )
    assert resolved.cost_usd(10, 10) is None
