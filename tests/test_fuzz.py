"""Schema-driven fuzzing of every route: schemathesis reads the OpenAPI document a live API
serves, sends every operation boundary and invalid values for each parameter and body field
(its coverage phase) and then random valid and invalid requests (fuzzing, seeded), as a fresh
organization's admin, and checks that no answer is a 5xx, that every status is documented and
that every body (the error envelope included) matches its documented schema.

The suite's pass is cheap and deterministic: FUZZ_EXAMPLES random requests per operation and
mode (default 3), seed FUZZ_SEED (default 1). A longer fuzz, e.g. before a release (100
examples take some 20 minutes on two cores):

    FUZZ_EXAMPLES=100 FUZZ_SEED=$RANDOM .venv/bin/pytest tests/test_fuzz.py

Failures come with a curl command that reproduces each; a 500 in the API's log has its
traceback under the same request id.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from api.app import all_endpoints
from tests.conftest import make_tenant

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


@pytest.fixture
async def fuzz_key(app: Starlette, db: Any) -> str:
    # Rate limited only in name: a long fuzz sends thousands of requests a minute.
    tenant = await make_tenant(app, db, rate_limit=1_000_000_000)
    return tenant.keys["admin"]


def test_no_route_answers_5xx_or_off_schema(live_api: str, fuzz_key: str, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{live_api}/api/openapi.json",
        f"--header=Authorization: Bearer {fuzz_key}",
        f"--max-examples={os.environ.get('FUZZ_EXAMPLES', '3')}",
        f"--seed={os.environ.get('FUZZ_SEED', '1')}",
        f"--checks={','.join(CHECKS)}",
        "--generation-database=none",
        "--workers=1",
        "--no-color",
    ]
    # In tmp_path: the CLI keeps a cache in .schemathesis/ under its working directory.
    run = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=3600, check=False
    )
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    failures = output.partition("= FAILURES =")[2].partition("= WARNINGS =")[0]
    assert run.returncode == 0, f"{tmp_path}/schemathesis.txt:\n{failures or output[-10_000:]}"
    assert f"Tested: {len(all_endpoints())}" in output, output[-3_000:]
