"""Agent executions end to end: the HTTP API, a real worker process, the Temporal dev server
and the fake Anthropic server speaking the real wire protocol."""

from __future__ import annotations

import uuid
from typing import Any

from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    error_reply,
    text_reply,
)
from tests.conftest import Tenant, assert_error, temporal_for
from tests.execution_helpers import (
    make_agent,
    read_stream,
    record_history,
    started_workflow,
    wait_answer,
    wait_status,
)


async def test_one_shot_execution_streams_and_completes(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(
        token, [text_reply("The answer is forty-two, as everyone knows by now.")]
    )
    agent_id = await make_agent(tenant, token, one_shot=True)
    started = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": "What is the answer?", "worker_queue_id": running_queue["id"]},
    )
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["status"] == "pending"
    assert body["workflow_id"] == f"agent-execution-{body['execution_id']}"
    final = await wait_status(tenant, body["execution_id"], "completed", "failed")
    assert final["status"] == "completed", final
    assert final["response"] == "The answer is forty-two, as everyone knows by now."
    assert final["usage"]["input_tokens"] > 0 and final["usage"]["cost_usd"] > 0

    events = await read_stream(tenant.viewer, body["execution_id"])
    types = [t for _, t, _ in events]
    # Finished before we connected: the whole history, `done` included, then history_complete.
    assert types[0] == "connected" and types[-2:] == ["done", "history_complete"]
    chunks = "".join(d["data"]["content"] for _, t, d in events if t == "message_chunk")
    assert chunks == final["response"]
    # The events of a one-shot run, chunks folded: the same as before issue 12 folded the
    # reports into fewer activities (compared with a run of 285ce28: events, messages, usage).
    folded = [
        t
        for n, (_, t, _) in enumerate(events)
        if t != "message_chunk" or n == 0 or events[n - 1][1] != t
    ]
    assert folded == [
        "connected",
        "status",
        "message",
        "message_chunk",
        "message",
        "status",
        "done",
        "history_complete",
    ]
    assert [d["status"] for _, t, d in events if t == "status"] == ["running", "completed"]
    ids = [i for i, _, _ in events if i is not None]
    assert ids == sorted(set(ids))

    # Resume after the third event: exactly the rest, no gap, no duplicate.
    resumed = await read_stream(
        tenant.viewer, body["execution_id"], **{"Last-Event-ID": str(ids[2])}
    )
    assert [i for i, _, _ in resumed if i is not None] == ids[3:]


async def test_multi_turn_conversation_and_mark_done(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    temporal_address: str,
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(
        token, [text_reply("First answer."), text_reply("Second answer.")]
    )
    agent_id = await make_agent(tenant, token)
    execution_id = (
        await tenant.member.post(
            f"/api/v1/agents/{agent_id}/execute",
            json={"prompt": "Hello", "worker_queue_id": running_queue["id"]},
        )
    ).json()["execution_id"]
    waiting = await wait_status(tenant, execution_id, "waiting_for_input")
    assert waiting["response"] == "First answer."
    sent = await tenant.member.post(
        f"/api/v1/executions/{execution_id}/message", json={"message": "And then?"}
    )
    assert sent.status_code == 202
    second = await wait_answer(tenant, execution_id, "Second answer.")
    per_turn = second["usage"]["per_turn"]
    assert [t["turn"] for t in per_turn] == [1, 2]
    assert sum(t["input_tokens"] for t in per_turn) == second["usage"]["input_tokens"]
    assert per_turn[1]["input_tokens"] > per_turn[0]["input_tokens"]  # the history grew
    done = await tenant.member.post(f"/api/v1/executions/{execution_id}/mark-done")
    assert done.status_code == 202
    await wait_status(tenant, execution_id, "completed")
    session = (await tenant.viewer.get(f"/api/v1/executions/{execution_id}/session")).json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "user", "assistant"]
    # The model saw the whole conversation on the second turn.
    requests = await AsyncFakeAnthropicClient(fake_llm.base_url).bodies(token)
    assert [m["role"] for m in requests[-1]["messages"]] == ["user", "assistant", "user"]
    # A finished execution refuses actions with its status.
    error = assert_error(await tenant.member.post(f"/api/v1/executions/{execution_id}/pause"), 409)
    assert error["details"]["status"] == "completed"
    await record_history(tenant, temporal_address, execution_id, "multi_turn_mark_done")


async def test_bad_request_from_model_fails_the_execution(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    temporal_address: str,
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(
        token, [error_reply(400, "prompt is too long")]
    )
    agent_id = await make_agent(tenant, token, one_shot=True)
    execution_id = (
        await tenant.member.post(
            f"/api/v1/agents/{agent_id}/execute",
            json={"prompt": "Hi", "worker_queue_id": running_queue["id"]},
        )
    ).json()["execution_id"]
    final = await wait_status(tenant, execution_id, "failed", "completed")
    assert final["status"] == "failed"
    assert "prompt is too long" in final["error_message"]
    await record_history(tenant, temporal_address, execution_id, "model_400_failed")


async def test_rate_limited_model_call_is_retried(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    temporal_address: str,
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(
        token, [error_reply(429, "slow down", retry_after=0), text_reply("Made it.")]
    )
    agent_id = await make_agent(tenant, token, one_shot=True)
    execution_id = (
        await tenant.member.post(
            f"/api/v1/agents/{agent_id}/execute",
            json={"prompt": "Hi", "worker_queue_id": running_queue["id"]},
        )
    ).json()["execution_id"]
    final = await wait_status(tenant, execution_id, "completed", "failed")
    assert final["status"] == "completed" and final["response"] == "Made it."
    await record_history(tenant, temporal_address, execution_id, "model_429_retried")


async def test_execute_refusals(
    tenant: Tenant, other_tenant: Tenant, running_queue: dict[str, Any], db: Any
) -> None:
    agent_id = await make_agent(tenant, "x")
    url = f"/api/v1/agents/{agent_id}/execute"
    queue_id = running_queue["id"]
    assert_error(await tenant.member.post(url, json={"prompt": "hi"}), 422, "VALIDATION_ERROR")
    assert_error(
        await tenant.member.post(url, json={"prompt": "", "worker_queue_id": queue_id}), 422
    )
    assert_error(
        await tenant.member.post(url, json={"prompt": "hi", "worker_queue_id": str(uuid.uuid4())}),
        404,
    )
    assert_error(
        await other_tenant.member.post(url, json={"prompt": "hi", "worker_queue_id": queue_id}),
        404,
    )
    assert_error(
        await tenant.viewer.post(url, json={"prompt": "hi", "worker_queue_id": queue_id}), 403
    )
    count = "SELECT count(*) FROM executions WHERE organization_id = $1"
    assert await db.fetchval(count, tenant.id) == 0


async def test_execute_retry_with_idempotency_key_starts_nothing_new(
    tenant: Tenant, running_queue: dict[str, Any], temporal_address: str
) -> None:
    agent_id = await make_agent(tenant, "idem", one_shot=True)
    request = {"prompt": "Once", "worker_queue_id": running_queue["id"]}
    headers = {"Idempotency-Key": f"exec-{uuid.uuid4()}"}
    first = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute", json=request, headers=headers
    )
    again = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute", json=request, headers=headers
    )
    assert first.status_code == again.status_code == 200
    assert again.json()["execution_id"] == first.json()["execution_id"]
    listed = (await tenant.viewer.get(f"/api/v1/executions?entity_id={agent_id}")).json()
    assert listed["total"] == 1
    # The answer comes before the start: wait for the workflow, then count its runs.
    await started_workflow(tenant, temporal_address, first.json()["execution_id"])
    client = await temporal_for(temporal_address, tenant)
    runs = [
        run async for run in client.list_workflows(f"WorkflowId = '{first.json()['workflow_id']}'")
    ]
    assert len(runs) == 1


async def test_a_nul_in_the_model_answer_does_not_fail_the_run(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    """Postgres text cannot hold NUL and the API refuses it; the worker escapes it in every
    report, so a model (or tool) printing one cannot turn a report into a refusal."""
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(token, [text_reply("a\x00b")])
    agent_id = await make_agent(tenant, token, one_shot=True)
    started = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": "Print a NUL", "worker_queue_id": running_queue["id"]},
    )
    final = await wait_status(tenant, started.json()["execution_id"], "completed", "failed")
    assert (final["status"], final["response"]) == ("completed", "a\\x00b")
