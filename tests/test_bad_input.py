"""Input the API cannot use answers 4xx in the error envelope and writes nothing: NUL characters
anywhere, JSON nested without end, numbers out of range, text that is not UTF-8, bodies of the
wrong shape, and the headers the API reads. Most of these once answered 500."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from api.app import all_endpoints, create_app
from api.routing import Endpoint
from controlplane.settings import Settings
from tests.conftest import Tenant, assert_error, client_for, worker_key_for
from tests.resource_helpers import assert_validation, create_environment, create_queue

MODEL = {"value": "acme/bad-input", "label": "Bad input", "provider": "acme"}
JSON = {"content-type": "application/json"}


async def org_rows(db: asyncpg.Pool[Any], org: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table keyed by organization: equal snapshots mean nothing was
    written. Idempotency records are left out: a replayed 4xx is stored on purpose."""
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND column_name = 'organization_id' AND table_name <> 'idempotency_keys' "
        "ORDER BY table_name"
    )
    snapshot = {}
    for record in tables:
        table = record["table_name"]
        rows = await db.fetch(f"SELECT * FROM {table} WHERE organization_id = $1", org)
        snapshot[table] = sorted((dict(row) for row in rows), key=repr)
    return snapshot


def example_path(path: str, value: str) -> str:
    """An endpoint's path template with every parameter set to `value`."""
    return re.sub(r"{[^}]+}", value, path)


@dataclass
class Worker:
    id: str
    client: httpx.AsyncClient


async def start_worker(tenant: Tenant) -> Worker:
    """A worker started on a new queue of the tenant, holding its worker token."""
    environment = await create_environment(tenant.admin, "bad-input")
    queue = await create_queue(tenant.admin, environment["id"], "q")
    starter = client_for(tenant.app, await worker_key_for(tenant, queue["id"]))
    started = await starter.post(f"/api/v1/worker-queues/{queue['id']}/start", json={})
    assert started.status_code == 200, started.text
    return Worker(
        started.json()["worker_id"], client_for(tenant.app, started.json()["worker_token"])
    )


def allowed_client(endpoint: Endpoint, tenant: Tenant, worker: Worker) -> httpx.AsyncClient:
    """A credential the endpoint lets in, so that the request reaches its parsing."""
    return worker.client if endpoint.role == "worker_token" else tenant.admin


async def post_raw(
    client: httpx.AsyncClient, path: str, raw: bytes | str, method: str = "POST"
) -> httpx.Response:
    content = raw.encode() if isinstance(raw, str) else raw
    return await client.request(method, path, content=content, headers=JSON)


@pytest.fixture
async def big_body_app(settings: Settings) -> AsyncIterator[Starlette]:
    """The production body cap (1 MiB), room for JSON nested 200,000 deep."""
    app = create_app(dataclasses.replace(settings, max_body_bytes=1024 * 1024))
    async with app.router.lifespan_context(app):
        yield app


# --- NUL characters: Postgres text cannot hold them ------------------------------------------


async def test_nul_in_any_path_parameter_is_not_found(tenant: Tenant, db: Any) -> None:
    worker = await start_worker(tenant)
    before = await org_rows(db, tenant.id)
    for endpoint in all_endpoints():
        if "{" not in endpoint.path:
            continue
        client = allowed_client(endpoint, tenant, worker)
        for value in ("%00", "a%00b"):
            path = example_path(endpoint.path, value)
            response = await client.request(endpoint.method, path, json={})
            assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert await org_rows(db, tenant.id) == before


async def test_nul_in_query_values_and_names(tenant: Tenant, db: Any) -> None:
    before = await org_rows(db, tenant.id)
    for endpoint in all_endpoints():
        if endpoint.query_model is None or "{" in endpoint.path:
            continue
        for name in endpoint.query_model.model_fields:
            response = await tenant.admin.request(endpoint.method, f"{endpoint.path}?{name}=a%00b")
            assert_validation(response, name)
        nameless = await tenant.admin.request(endpoint.method, f"{endpoint.path}?a%00b=1")
        assert_validation(nameless, "a\x00b")
    assert_validation(await tenant.admin.get("/api/v1/agents?status_filter=%00"), "status_filter")
    assert_validation(await tenant.admin.get("/api/v1/policies?search=a%00b"), "search")
    assert await org_rows(db, tenant.id) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**MODEL, "label": "a\x00b"}, "label"),
        ({**MODEL, "capabilities": {"\x00": True}}, "capabilities.\x00"),
        ({**MODEL, "capabilities": {"tools": ["ok", "n\x00"]}}, "capabilities.tools.1"),
        ({**MODEL, "capabilities": {"deep": {"key\x00": {}}}}, "capabilities.deep.key\x00"),
        ({**MODEL, "\x00": "ignored field"}, "\x00"),
    ],
)
async def test_nul_in_json_values_and_keys(
    tenant: Tenant, db: Any, body: dict[str, Any], field: str
) -> None:
    before = await org_rows(db, tenant.id)
    # json.dumps escapes NUL as \u0000, the form a client sends.
    assert_validation(await post_raw(tenant.admin, "/api/v1/models", json.dumps(body)), field)
    assert await org_rows(db, tenant.id) == before


async def test_escaped_backslash_before_u0000_is_not_nul(tenant: Tenant) -> None:
    # `\\u0000` in JSON is a backslash then "u0000": six harmless characters.
    raw = json.dumps({**MODEL, "description": "C strings end in \\u0000"})
    response = await post_raw(tenant.admin, "/api/v1/models", raw)
    assert response.status_code == 201, response.text
    assert response.json()["description"] == "C strings end in \\u0000"


async def test_nul_in_headers_we_read(tenant: Tenant, db: Any) -> None:
    before = await org_rows(db, tenant.id)
    body = {"name": "Nul", "key": "NUL"}
    for key in ("a\x00b", "\x00", "tab\there"):
        response = await tenant.member.post(
            "/api/v1/projects", json=body, headers={"Idempotency-Key": key}
        )
        assert_error(response, 400, "BAD_REQUEST")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE organization_id = $1", tenant.id
        )
        == 0
    )
    assert await org_rows(db, tenant.id) == before
    # An unusable request id is replaced by a fresh one, as any unsafe one is.
    response = await tenant.viewer.get("/api/v1/projects", headers={"X-Request-ID": "a\x00b"})
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    anonymous = await tenant.viewer.get(
        "/api/v1/projects", headers={"Authorization": "Bearer cpk_\x00"}
    )
    assert_error(anonymous, 401, "AUTHENTICATION_ERROR")


async def test_unusable_last_event_id(tenant: Tenant, db: Any) -> None:
    execution_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO executions (id, organization_id, prompt) VALUES ($1, $2, 'hi')",
        execution_id,
        tenant.id,
    )
    stream = f"/api/v1/executions/{execution_id}/stream"
    for header in ("\x00", "1\x00", "9" * 30, "-1", "9" * 5000):
        response = await tenant.viewer.get(stream, headers={"Last-Event-ID": header})
        assert_error(response, 400, "BAD_REQUEST")
    for query in ("9" * 30, "9" * 5000, "1e400", "%00"):
        response = await tenant.viewer.get(f"{stream}?last_event_id={query}")
        assert_validation(response, "last_event_id")


# --- Nesting ---------------------------------------------------------------------------------


async def test_json_nested_200000_deep(big_body_app: Starlette, tenant: Tenant, db: Any) -> None:
    client = client_for(big_body_app, tenant.keys["admin"])
    before = await org_rows(db, tenant.id)
    for raw in ("[" * 200_000, "[" * 200_000 + "]" * 200_000, '{"a":' * 100_000 + "1"):
        error = assert_error(await post_raw(client, "/api/v1/models", raw), 400, "BAD_REQUEST")
        assert "nested" in error["message"]
    assert await org_rows(db, tenant.id) == before


async def test_nesting_depth_is_capped_at_64(tenant: Tenant, db: Any) -> None:
    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(levels):
            value = {"a": value}
        return value

    # The body itself is level 1 and capabilities level 2.
    deepest = {**MODEL, "capabilities": nested(62)}
    assert (await tenant.admin.post("/api/v1/models", json=deepest)).status_code == 201
    before = await org_rows(db, tenant.id)
    too_deep = {**MODEL, "value": "acme/deeper", "capabilities": nested(63)}
    error = assert_error(await tenant.admin.post("/api/v1/models", json=too_deep), 400)
    assert "64" in error["message"]
    for raw in ('{"a":' * 10_000 + "1" + "}" * 10_000, "[" * 30_000 + "]" * 30_000):
        assert_error(await post_raw(tenant.admin, "/api/v1/models", raw), 400, "BAD_REQUEST")
    assert await org_rows(db, tenant.id) == before


# --- Numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('"display_order": ' + "1" * 5000, "display_order"),
        ('"display_order": -' + "1" * 5000, "display_order"),
        ('"display_order": 2147483648', "display_order"),
        ('"display_order": "99999999999999999999"', "display_order"),
        ('"capabilities": {"n": ' + "9" * 5000 + "}", "capabilities.n"),
        ('"capabilities": {"n": 9223372036854775808}', "capabilities.n"),
        ('"capabilities": {"n": [1e400]}', "capabilities.n.0"),
        ('"capabilities": {"n": -1e19}', "capabilities.n"),
        ('"capabilities": {"n": NaN}', "capabilities.n"),
        ('"pricing": {"input_per_million": 1e400, "output_per_million": 1}', "pricing"),
        ('"pricing": {"input_per_million": 1, "output_per_million": -1e400}', "pricing"),
        ('"pricing": {"input_per_million": Infinity, "output_per_million": 1}', "pricing"),
        ('"pricing": {"input_per_million": NaN, "output_per_million": 1}', "pricing"),
        ('"pricing": {"input_per_million": "Infinity", "output_per_million": 1}', "pricing"),
        ('"pricing": {"input_per_million": "nan", "output_per_million": 1}', "pricing"),
        ('"pricing": {"input_per_million": 1e300, "output_per_million": 1}', "pricing"),
    ],
)
async def test_numbers_out_of_range_in_bodies(
    tenant: Tenant, db: Any, raw: str, field: str
) -> None:
    before = await org_rows(db, tenant.id)
    body = json.dumps(MODEL)[:-1] + ", " + raw + "}"
    errors = assert_validation(await post_raw(tenant.admin, "/api/v1/models", body))
    assert any(item["field"].startswith(field) for item in errors), errors
    assert await org_rows(db, tenant.id) == before


async def test_numbers_in_range_are_kept_and_can_be_sent_back(tenant: Tenant) -> None:
    # jsonb gives 1e18 back as an integer, one that can be sent again.
    capabilities = {"big": 1e18, "small": 1.5e-300, "max": 2**63 - 1}
    body = {
        **MODEL,
        "capabilities": capabilities,
        "pricing": {"input_per_million": 0, "output_per_million": 1e6},
    }
    created = await tenant.admin.post("/api/v1/models", json={**body, "display_order": -5})
    assert created.status_code == 201, created.text
    assert created.json()["pricing"]["output_per_million"] == 1e6
    assert created.json()["capabilities"] == capabilities
    model = f"/api/v1/models/{created.json()['id']}"
    again = await tenant.admin.patch(model, json={"capabilities": created.json()["capabilities"]})
    assert again.status_code == 200, again.text
    huge = {"pricing": {"input_per_million": 1e400, "output_per_million": 1}}
    assert_validation(
        await post_raw(tenant.admin, model, json.dumps(huge), "PATCH"), "pricing.input_per_million"
    )
    patched = await tenant.admin.patch(model, json={"display_order": 2**31})
    assert_validation(patched, "display_order")
    assert (await tenant.admin.get(model)).json()["display_order"] == -5


async def test_agent_configuration_numbers(tenant: Tenant, db: Any) -> None:
    before = await org_rows(db, tenant.id)
    for configuration, field in (
        ({"timeout": 1e300}, "configuration.timeout"),
        ({"timeout": "Infinity"}, "configuration.timeout"),
        ({"max_tokens": 2**40}, "configuration.max_tokens"),
    ):
        response = await tenant.member.post(
            "/api/v1/agents", json={"name": "numbers", "configuration": configuration}
        )
        assert_validation(response, field)
    assert await org_rows(db, tenant.id) == before


@pytest.mark.parametrize(
    "query",
    [
        "limit=" + "9" * 5000,
        "offset=" + "9" * 30,
        "limit=1e400",
        "limit=NaN",
        "offset=-" + "9" * 30,
    ],
)
async def test_numbers_out_of_range_in_queries(tenant: Tenant, query: str) -> None:
    assert_validation(await tenant.viewer.get(f"/api/v1/projects?{query}"), query.split("=")[0])


async def test_worker_heartbeat_numbers(tenant: Tenant, db: Any) -> None:
    worker = await start_worker(tenant)
    before = await org_rows(db, tenant.id)
    for tasks in (2**31, 2**63, -1):
        legacy = await worker.client.post(
            "/api/v1/workers/heartbeat", json={"worker_id": worker.id, "tasks_processed": tasks}
        )
        assert_validation(legacy, "tasks_processed")
        own = await worker.client.post(
            f"/api/v1/workers/{worker.id}/heartbeat", json={"tasks_processed": tasks}
        )
        assert_validation(own, "tasks_processed")
    assert await org_rows(db, tenant.id) == before


# --- Text that is not UTF-8, bodies of the wrong shape ------------------------------------------


async def test_invalid_utf8_and_lone_surrogates(tenant: Tenant, db: Any) -> None:
    before = await org_rows(db, tenant.id)
    # The last is a surrogate encoded as UTF-8, which json.loads would have let through.
    for data in (
        b'{"value": "\xff"}',
        b'{"\xc3\x28": 1}',
        b"\xfe\xff\x00{",
        b'{"a": "\xed\xa0\x80"}',
    ):
        assert_error(await post_raw(tenant.admin, "/api/v1/models", data), 400, "BAD_REQUEST")
    # A lone surrogate is valid JSON escaping but no Unicode text: neither Postgres nor a JSON
    # response can carry it.
    for member, field in (
        ('"label": "\\ud800"', "label"),
        ('"capabilities": {"\\udfff": 1}', "capabilities.\\udfff"),
    ):
        body = json.dumps(MODEL)[:-1] + ", " + member + "}"
        response = await post_raw(tenant.admin, "/api/v1/models", body)
        errors = assert_validation(response)
        assert any(item["field"] == field for item in errors), errors
    for query in ("search=%FF", "search=a%C3%28", "%FF=1", "search=%ED%A0%80"):
        error = assert_error(await tenant.admin.get(f"/api/v1/policies?{query}"), 400)
        assert "UTF-8" in error["message"]
    assert await org_rows(db, tenant.id) == before


async def test_path_that_is_not_utf8_names_nothing(tenant: Tenant) -> None:
    assert_error(await tenant.admin.get("/api/v1/models/%FF%FE"), 404, "RESOURCE_NOT_FOUND")
    assert_error(await tenant.admin.get("/api/v1/secrets/%ED%A0%80"), 404, "RESOURCE_NOT_FOUND")


@pytest.mark.parametrize("raw", ["[]", '"model"', "1", "null", "true", "[{}]"])
async def test_body_that_is_not_an_object(tenant: Tenant, db: Any, raw: str) -> None:
    worker = await start_worker(tenant)
    before = await org_rows(db, tenant.id)
    for endpoint in all_endpoints():
        if endpoint.body_model is None or "{" in endpoint.path:
            continue
        client = allowed_client(endpoint, tenant, worker)
        response = await client.request(endpoint.method, endpoint.path, content=raw, headers=JSON)
        assert_error(response, 422, "VALIDATION_ERROR")
    assert await org_rows(db, tenant.id) == before


async def test_content_type_is_not_checked(tenant: Tenant) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        body = {**MODEL, "value": f"acme/{content_type.replace('/', '-')}"}
        response = await tenant.admin.post(
            "/api/v1/models", content=json.dumps(body), headers={"content-type": content_type}
        )
        assert response.status_code == 201, response.text
    with_bom = {**MODEL, "value": "acme/bom"}
    bom = await post_raw(
        tenant.admin, "/api/v1/models", b"\xef\xbb\xbf" + json.dumps(with_bom).encode()
    )
    assert bom.status_code == 201, bom.text
    form = await tenant.admin.post("/api/v1/models", data={"value": "acme/form"})
    assert_error(form, 400, "BAD_REQUEST")


# --- What the fuzzer found undocumented ------------------------------------------------------


async def test_conflicts_and_size_caps_are_documented(
    tenant: Tenant, anonymous: httpx.AsyncClient
) -> None:
    paths = (await anonymous.get("/api/openapi.json")).json()["paths"]
    for operations in paths.values():
        for method, operation in operations.items():
            if "requestBody" in operation:
                assert "413" in operation["responses"], operation["operationId"]
            if method != "get":
                assert "409" in operation["responses"], operation["operationId"]
            for parameter in operation["parameters"]:
                # An empty one was redirected to another route, which answered 405.
                if parameter["in"] == "path":
                    assert parameter["schema"]["minLength"] == 1, operation["operationId"]
    project = {"name": "Twice", "key": "TWICE"}
    assert (await tenant.admin.post("/api/v1/projects", json=project)).status_code == 201
    assert_error(await tenant.admin.post("/api/v1/projects", json=project), 409)
    big = {**project, "description": "x" * 70_000}
    assert_error(await tenant.admin.post("/api/v1/projects", json=big), 413)
    # A queue name that two environments use is ambiguous.
    for environment in ("one", "two"):
        created = await create_environment(tenant.admin, environment)
        await create_queue(tenant.admin, created["id"], "shared")
    assert_error(await tenant.admin.get("/api/v1/workers/shared"), 409, "RESOURCE_CONFLICT")
    assert "409" in paths["/api/v1/workers/{runner_name}"]["get"]["responses"]


def unbounded_numbers(schema: Any, components: dict[str, Any], where: str) -> list[str]:
    """The integer and number fields under `schema` that lack a lower or an upper bound."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return unbounded_numbers(components[name], components, f"{where}>{name}")
    found = []
    if schema.get("type") in ("integer", "number"):
        low = {"minimum", "exclusiveMinimum"} & set(schema)
        high = {"maximum", "exclusiveMaximum"} & set(schema)
        if not (low and high):
            found.append(where)
    for name, sub in schema.get("properties", {}).items():
        found += unbounded_numbers(sub, components, f"{where}.{name}")
    for sub in [*schema.get("anyOf", []), *schema.get("oneOf", []), *schema.get("allOf", [])]:
        found += unbounded_numbers(sub, components, where)
    for key in ("items", "additionalProperties"):
        found += unbounded_numbers(schema.get(key), components, f"{where}.{key}")
    return found


async def test_every_number_a_request_takes_is_bounded(anonymous: httpx.AsyncClient) -> None:
    # Unbounded integers overflowed Postgres integer columns (model display_order, heartbeat
    # tasks_processed) and prices took 1e400. A bound in the document also sends the fuzzer's
    # boundary values right at the edge.
    document = (await anonymous.get("/api/openapi.json")).json()
    components = document["components"]["schemas"]
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            for parameter in operation["parameters"]:
                found += unbounded_numbers(
                    parameter["schema"], components, f"{where} {parameter['name']}"
                )
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                found += unbounded_numbers(body["schema"], components, f"{where} body")
    assert found == []
