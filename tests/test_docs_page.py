"""The docs page at /api/docs, its assets, and the OpenAPI document it renders.

These routes touch neither Postgres nor Temporal, so they run on an app that was never started.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from api import docs_page
from api.app import create_app
from controlplane.settings import Settings
from tests.conftest import assert_error

URL_WITH_SCHEME = re.compile(r"(?i)\b(?:https?|wss?|ftp):|//[a-z0-9.-]+\.[a-z]{2,}")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def bare_app() -> Starlette:
    # Unreachable addresses: nothing here may need them.
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", temporal_address="x:1")
    return create_app(settings)


@pytest.fixture
async def client(bare_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=bare_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


async def test_page_is_html_that_loads_local_assets(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<script src="/api/docs/static/docs.js"' in page
    assert '<link rel="stylesheet" href="/api/docs/static/docs.css">' in page
    assert "Content-Security-Policy" in page and "default-src 'self'" in page
    assert 'id="api-key"' in page


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("docs.js", "text/javascript"), ("docs.css", "text/css")],
)
async def test_assets_are_served_with_their_content_type(
    client: httpx.AsyncClient, name: str, content_type: str
) -> None:
    response = await client.get(f"/api/docs/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (docs_page.STATIC_DIR / name).read_bytes()
    again = await client.get(
        f"/api/docs/static/{name}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize(
    "path",
    ["/api/docs/static/nope.js", "/api/docs/static/..%2Fdocs_page.py", "/api/docs/static/"],
)
async def test_unknown_assets_are_404(client: httpx.AsyncClient, path: str) -> None:
    assert_error(await client.get(path), 404, "RESOURCE_NOT_FOUND")


def _served_texts() -> Iterator[tuple[str, str]]:
    yield "page", docs_page.HTML
    for path in sorted(docs_page.STATIC_DIR.iterdir()):
        yield path.name, path.read_text()


def test_every_static_file_is_a_served_asset() -> None:
    on_disk = {p.name for p in docs_page.STATIC_DIR.iterdir() if not p.name.startswith(".")}
    assert on_disk == set(docs_page.ASSETS)


@pytest.mark.parametrize(("name", "text"), list(_served_texts()))
def test_no_other_host_is_referenced(name: str, text: str) -> None:
    found = URL_WITH_SCHEME.findall(text)
    assert not found, f"{name} refers to other hosts: {found}"
    assert "@import" not in text


def test_script_renders_from_this_servers_openapi() -> None:
    script = (docs_page.STATIC_DIR / "docs.js").read_text()
    assert '"/api/openapi.json"' in script
    assert "Authorization" in script and "Bearer " in script
    assert "localStorage" in script


NODE = shutil.which("node")
# Loads docs.js as a module (it exports its schema helpers when there is no browser) and prints
# the body example it would prefill for each operation.
EXAMPLES_JS = """
const docs = require(process.env.DOCS_JS);
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const spec = JSON.parse(input);
  docs.useSpec(spec);
  const examples = {};
  for (const item of Object.values(spec.paths)) {
    for (const op of Object.values(item)) {
      const media = op.requestBody && op.requestBody.content["application/json"];
      if (media) examples[op.operationId] = docs.example(media.schema);
      for (const p of op.parameters || []) docs.typeLabel(p.schema);
    }
  }
  for (const schema of Object.values(spec.components.schemas)) {
    docs.typeLabel(schema);
    for (const prop of Object.values(schema.properties || {})) docs.typeLabel(prop);
  }
  process.stdout.write(JSON.stringify(examples));
});
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_prefilled_bodies_are_valid_requests(spec: dict[str, Any]) -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, "-e", EXAMPLES_JS],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
        env={"DOCS_JS": str(docs_page.STATIC_DIR / "docs.js"), "PATH": os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr
    examples = json.loads(result.stdout)
    jsonschema = importlib.import_module("jsonschema")
    with_bodies = {
        op["operationId"]: op["requestBody"]["content"]["application/json"]["schema"]
        for _, _, op in _operations(spec)
        if "requestBody" in op
    }
    assert set(examples) == set(with_bodies)
    for operation_id, schema in with_bodies.items():
        rooted = {**schema, "components": spec["components"]}
        errors = list(jsonschema.Draft202012Validator(rooted).iter_errors(examples[operation_id]))
        assert not errors, f"{operation_id}: {examples[operation_id]} -> {errors[0].message}"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_script_parses() -> None:
    result = subprocess.run(
        ["node", "--check", str(docs_page.STATIC_DIR / "docs.js")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _pointer(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local refs are used, got {ref}"
    node: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert method in HTTP_METHODS, f"{path}: unexpected key {method}"
            yield path, method, op


def test_openapi_is_31_with_its_required_fields(spec: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", spec["openapi"])
    assert spec["info"]["title"] and spec["info"]["version"]
    assert spec["paths"]
    operation_ids = []
    for path, method, op in _operations(spec):
        assert path.startswith("/"), path
        assert op["responses"], f"{method} {path} has no responses"
        for status, response in op["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d|[1-5]XX|default", status)
            assert isinstance(response["description"], str)
        operation_ids.append(op["operationId"])
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{([^}]+)}", path)), f"{method} {path}"
        for param in op.get("parameters", []):
            assert param["in"] in {"path", "query", "header", "cookie"}
            assert "schema" in param
            if param["in"] == "path":
                assert param["required"] is True
        if "requestBody" in op:
            assert op["requestBody"]["content"]
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_every_api_v1_operation_needs_a_key(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes
    for path, method, op in _operations(spec):
        if not path.startswith("/api/v1/"):
            continue
        security = op.get("security", spec.get("security"))
        assert security, f"{method.upper()} {path} has no security requirement"
        for requirement in security:
            assert requirement, f"{method.upper()} {path} allows anonymous access"
            assert set(requirement) <= set(schemes)


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert refs, "the document should share its schemas through components"
    for ref in refs:
        _pointer(spec, ref)


def test_component_schemas_are_valid_json_schema(spec: dict[str, Any]) -> None:
    # jsonschema comes with claude-agent-sdk, a runtime dependency.
    jsonschema = importlib.import_module("jsonschema")
    for name, schema in spec["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"components.schemas.{name}: {exc.message}")
