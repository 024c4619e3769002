"""An execute answers once its row is committed and its workflow starts right after
(controlplane/executions/starting.py). To see a start still due, one API app here has its
Temporal out of reach (an address nothing listens on): what it accepts is made later by the
housekeeping round, or by whatever is done to the execution first, through the real app."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.app import create_app
from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    FakeReply,
    text_reply,
)
from controlplane.errors import Unavailable
from controlplane.executions.starting import is_transient, start_stalled
from controlplane.services import free_port
from controlplane.settings import Settings
from tests.conftest import Tenant, client_for, temporal_for
from tests.execution_helpers import make_agent, make_queue, wait_answer, wait_status


@pytest.fixture(scope="module")
async def cut_off(settings: Settings) -> AsyncIterator[Starlette]:
    """An API app on the same database whose Temporal does not answer; it gives up a start
    after a moment instead of the usual seconds."""
    unreachable = dataclasses.replace(settings, temporal_address=f"127.0.0.1:{free_port()}")
    application = create_app(unreachable)
    async with application.router.lifespan_context(application):
        application.state.cp.starts.retry_seconds = 0.2
        yield application


async def accepted_unstarted(
    cut_off: Starlette,
    tenant: Tenant,
    db: Any,
    caplog: pytest.LogCaptureFixture,
    queue_id: str,
    token: str,
    replies: list[FakeReply] | None = None,
    fake_llm: FakeAnthropicServer | None = None,
) -> str:
    """An execute of a new agent (`token` names it and its fake model script, `replies`) that
    the cut-off app answered, and whose start it gave up on."""
    token = f"{token}-{tenant.id}"  # the fake model server is shared by every test
    if replies:
        assert fake_llm is not None
        await AsyncFakeAnthropicClient(fake_llm.base_url).script(token, replies)
    agent_id = await make_agent(tenant, token)
    response = await client_for(cut_off, tenant.keys["member"]).post(
        f"/api/v1/agents/{agent_id}/execute", json={"prompt": "Hi", "worker_queue_id": queue_id}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    execution_id = str(response.json()["execution_id"])
    await cut_off.state.cp.starts.drain(30)
    assert "left to the housekeeping round" in caplog.text  # its start tried, and given up
    caplog.clear()
    row = await db.fetchrow(
        "SELECT status, start_payload FROM executions WHERE id = $1::uuid", execution_id
    )
    assert row["status"] == "pending" and row["start_payload"] is not None
    return execution_id


async def workflow_status(
    temporal_address: str, tenant: Tenant, execution_id: str
) -> WorkflowExecutionStatus | None:
    client = await temporal_for(temporal_address, tenant)
    description = await client.get_workflow_handle(f"agent-execution-{execution_id}").describe()
    return description.status


async def test_an_execute_taken_while_temporal_is_away_runs_once_housekeeping_starts_it(
    app: Starlette,
    cut_off: Starlette,
    tenant: Tenant,
    db: Any,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    execution_id = await accepted_unstarted(
        cut_off, tenant, db, caplog, running_queue["id"], "away", [text_reply("Back.")], fake_llm
    )

    # Other tests' executions share this database: count only on ours.
    assert await start_stalled(db, app.state.cp.temporal, stalled_seconds=0) >= 1
    body = await wait_answer(tenant, execution_id, "Back.")
    assert body["status"] == "waiting_for_input"
    payload = await db.fetchval(
        "SELECT start_payload FROM executions WHERE id = $1::uuid", execution_id
    )
    assert payload is None  # its workflow reported: no start is due


async def test_a_cancel_before_the_workflow_exists_starts_and_cancels_it(
    cut_off: Starlette,
    tenant: Tenant,
    db: Any,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    replies = [text_reply("Late.")]
    execution_id = await accepted_unstarted(
        cut_off, tenant, db, caplog, running_queue["id"], "cancel-early", replies, fake_llm
    )

    cancelled = await tenant.member.post(f"/api/v1/executions/{execution_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = await wait_status(tenant, execution_id, "cancelled", "waiting_for_input")
    assert body["status"] == "cancelled"


async def test_a_message_before_the_workflow_exists_reaches_it(
    cut_off: Starlette,
    tenant: Tenant,
    db: Any,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    replies = [text_reply("First."), text_reply("Second.")]
    execution_id = await accepted_unstarted(
        cut_off, tenant, db, caplog, running_queue["id"], "message-early", replies, fake_llm
    )

    sent = await tenant.member.post(
        f"/api/v1/executions/{execution_id}/message", json={"message": "And then?"}
    )
    assert sent.status_code == 202, sent.text
    await wait_answer(tenant, execution_id, "Second.")


async def test_a_delete_before_the_workflow_exists_leaves_no_workflow_running(
    cut_off: Starlette,
    tenant: Tenant,
    db: Any,
    temporal_address: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = await make_queue(tenant, "unpolled")  # no worker: nothing runs before the delete
    execution_id = await accepted_unstarted(
        cut_off, tenant, db, caplog, queue["id"], "delete-early"
    )

    deleted = await tenant.member.delete(f"/api/v1/executions/{execution_id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True, deleted.text
    status = await workflow_status(temporal_address, tenant, execution_id)
    assert status == WorkflowExecutionStatus.TERMINATED
    gone = await db.fetchval("SELECT count(*) FROM executions WHERE id = $1::uuid", execution_id)
    assert gone == 0


async def test_a_start_for_a_deleted_queue_fails_the_execution_saying_why(
    app: Starlette,
    cut_off: Starlette,
    tenant: Tenant,
    db: Any,
    temporal_address: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = await make_queue(tenant, "doomed")
    execution_id = await accepted_unstarted(cut_off, tenant, db, caplog, queue["id"], "queue-gone")
    deleted = await tenant.admin.delete(f"/api/v1/worker-queues/{queue['id']}")
    assert deleted.status_code in (200, 204), deleted.text

    assert await start_stalled(db, app.state.cp.temporal, stalled_seconds=0) >= 1
    body = (await tenant.viewer.get(f"/api/v1/executions/{execution_id}")).json()
    assert body["status"] == "failed"
    assert "worker queue was deleted" in body["error_message"]
    with pytest.raises(RPCError) as raised:
        await workflow_status(temporal_address, tenant, execution_id)
    assert raised.value.status == RPCStatusCode.NOT_FOUND  # nothing was started


def test_only_temporal_out_of_reach_is_worth_another_start() -> None:
    assert is_transient(RPCError("down", RPCStatusCode.UNAVAILABLE, b""))
    assert is_transient(Unavailable("Temporal at x is unreachable"))
    assert not is_transient(RPCError("too big", RPCStatusCode.INVALID_ARGUMENT, b""))
    assert not is_transient(ValueError("bad payload"))
