"""Executions whose workflow ended behind the control plane's back are settled from Temporal."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette

from controlplane.executions.reconcile import reconcile_executions
from tests.conftest import Tenant
from tests.execution_helpers import events_of, execute, make_agent, make_queue, started_workflow


async def test_a_workflow_terminated_outside_settles_its_execution(
    app: Starlette, tenant: Tenant, temporal_address: str, db: Any
) -> None:
    queue = await make_queue(tenant, "rec")  # no worker: the execution stays pending
    execution_id = await execute(tenant, await make_agent(tenant, "rec"), queue["id"])
    live = await execute(tenant, await make_agent(tenant, "rec2"), queue["id"])
    handle = await started_workflow(tenant, temporal_address, execution_id)
    await handle.terminate("by hand")

    # Other tests' executions share this database, so count only on ours below.
    assert (
        await reconcile_executions(app.state.cp.pool, app.state.cp.temporal, quiet_seconds=0) >= 1
    )
    body = (await tenant.viewer.get(f"/api/v1/executions/{execution_id}")).json()
    assert body["status"] == "failed"
    assert "terminated outside the control plane" in body["error_message"]
    assert body["completed_at"] is not None
    kinds_before_again = [e["event_type"] for e in await events_of(db, execution_id)]
    assert kinds_before_again[-2:] == ["status", "error"]
    # The live one is only quiet: its workflow still runs.
    assert (await tenant.viewer.get(f"/api/v1/executions/{live}")).json()["status"] == "pending"
    await reconcile_executions(
        app.state.cp.pool, app.state.cp.temporal, quiet_seconds=0
    )  # settled once, not again
    assert [e["event_type"] for e in await events_of(db, execution_id)] == kinds_before_again
