"""Team executions end to end: HTTP, a real worker process, Temporal and the fake model. The
leader delegating (one member, two at once, an unknown member, a failing member), sequential
and parallel teams, a conversation of several turns, pause, cancel cascading to members, and a
worker killed while a member streams."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    error_reply,
    text_reply,
    tool_reply,
)
from tests.conftest import Tenant, as_worker, assert_error
from tests.execution_helpers import (
    events_of,
    make_agent,
    read_stream,
    record_history,
    start_worker_process,
    wait_answer,
    wait_status,
)
from tests.test_governance_e2e import DENY_EXECUTION, attach_policy

LONG_TEXT = " ".join(f"word{i}" for i in range(120))


async def make_team(
    tenant: Tenant, token: str, member_ids: list[str], **fields: Any
) -> dict[str, Any]:
    configuration = {
        "member_ids": member_ids,
        "instructions": f"Coordinate well. [{token}]",
        "one_shot": True,
        **fields.pop("configuration", {}),
    }
    response = await tenant.member.post(
        "/api/v1/teams",
        json={"name": f"team-{uuid.uuid4().hex[:6]}", "configuration": configuration, **fields},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def execute_team(tenant: Tenant, team_id: str, queue_id: str, prompt: str = "Go") -> str:
    response = await tenant.member.post(
        f"/api/v1/teams/{team_id}/execute", json={"prompt": prompt, "worker_queue_id": queue_id}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["workflow_id"] == f"team-execution-{body['execution_id']}"
    return str(body["execution_id"])


async def member_runs(tenant: Tenant, execution_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = (
        await tenant.viewer.get(
            "/api/v1/executions", params={"parent_execution_id": execution_id, "limit": 50}
        )
    ).json()["items"]
    return sorted(runs, key=lambda run: run["created_at"])


async def agent_named(
    tenant: Tenant, token: str, name: str, **configuration: Any
) -> dict[str, Any]:
    agent_id = await make_agent(tenant, token, **configuration)
    renamed = await tenant.member.patch(f"/api/v1/agents/{agent_id}", json={"name": name})
    assert renamed.status_code == 200, renamed.text
    body: dict[str, Any] = renamed.json()
    return body


async def test_the_leader_delegates_and_the_member_answers(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    db: Any,
    temporal_address: str,
) -> None:
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    researcher = await agent_named(tenant, mine, f"researcher-{mine[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead,
        [
            tool_reply("delegate_task", {"member": researcher["name"], "task": "Find the answer"}),
            text_reply("The team says 42."),
        ],
    )
    await fake.script(mine, [text_reply("The answer is 42.")])
    team = await make_team(tenant, lead, [researcher["id"]])
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])

    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    assert final["response"] == "The team says 42."
    assert final["execution_type"] == "team" and final["entity_id"] == team["id"]
    (run,) = await member_runs(tenant, execution_id)
    assert run["parent_execution_id"] == execution_id
    assert run["entity_id"] == researcher["id"] and run["status"] == "completed"
    assert run["response"] == "The answer is 42."
    assert run["prompt"] == "Find the answer"
    # The member's answer is the leader's tool result.
    leader_calls = await fake.bodies(lead)
    assert len(leader_calls) == 2
    assert [t["name"] for t in leader_calls[0]["tools"]] == ["delegate_task"]
    assert researcher["name"] in leader_calls[0]["system"]
    result = leader_calls[1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["content"] == "The answer is 42."

    # The team's stream carries the leader's events and the member's as member_* events.
    events = await read_stream(tenant.viewer, execution_id)
    kinds = [kind for _, kind, _ in events]
    assert "member_message_chunk" in kinds and "member_message_complete" in kinds
    assert (
        kinds.index("tool_started")
        < kinds.index("member_message_chunk")
        < kinds.index("member_message_complete")
        < kinds.index("tool_completed")
        < kinds.index("done")
    )
    member_events = [data for _, kind, data in events if kind.startswith("member_")]
    assert member_events
    for data in member_events:
        assert data["member_id"] == researcher["id"]
        assert data["member_name"] == researcher["name"]
        assert data["child_execution_id"] == run["id"]
    chunks = "".join(d["content"] for _, k, d in events if k == "member_message_chunk")
    assert chunks == "The answer is 42."
    # tool_* events nest their fields under `data` (as Kubiya's do); member_* events are flat.
    completed = next(d for _, k, d in events if k == "tool_completed")["data"]
    assert completed["member_name"] == researcher["name"]
    assert completed["child_execution_id"] == run["id"]
    assert completed["tool_status"] == "success"
    # The member's own stream has its own run.
    own = await read_stream(tenant.viewer, run["id"])
    assert any(kind == "message_chunk" for _, kind, _ in own)

    # Usage rolls up: the team's total counts the leader's two calls and the member's one.
    usage = final["usage"]
    member_usage = usage["members"][researcher["id"]]
    assert member_usage["runs"] == 1 and member_usage["name"] == researcher["name"]
    assert member_usage["input_tokens"] == run["usage"]["input_tokens"] > 0
    leader_tokens = sum(turn["input_tokens"] for turn in usage["per_turn"])
    assert usage["input_tokens"] == leader_tokens
    assert usage["input_tokens"] > member_usage["input_tokens"]
    await record_history(tenant, temporal_address, execution_id, "team_leader_delegates", "team")
    assert await events_of(db, execution_id)


async def test_two_delegations_in_one_answer_run_at_once(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    lead, one, two = (uuid.uuid4().hex for _ in range(3))
    first = await agent_named(tenant, one, f"first-{one[:4]}")
    second = await agent_named(tenant, two, f"second-{two[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead,
        [
            {
                "text": "",
                "tool_calls": [
                    {"name": "delegate_task", "input": {"member": first["name"], "task": "One"}},
                    {"name": "delegate_task", "input": {"member": second["id"], "task": "Two"}},
                ],
            },
            text_reply("Both parts done."),
        ],
    )
    # Each member streams for a while: the runs overlap only if they run at once.
    await fake.script(one, [text_reply("one " * 20, delay_per_chunk_ms=100)])
    await fake.script(two, [text_reply("two " * 20, delay_per_chunk_ms=100)])
    team = await make_team(tenant, lead, [first["id"], second["id"]])
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    runs = await member_runs(tenant, execution_id)
    assert {run["entity_id"] for run in runs} == {first["id"], second["id"]}
    assert all(run["status"] == "completed" for run in runs)
    a, b = runs
    assert a["started_at"] < b["completed_at"] and b["started_at"] < a["completed_at"]
    results = (await fake.bodies(lead))[1]["messages"][-1]["content"]
    assert [r["content"].split()[0] for r in results] == ["one", "two"]
    assert set(final["usage"]["members"]) == {first["id"], second["id"]}


async def test_an_unknown_or_failing_member_is_an_error_the_leader_recovers_from(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    member = await agent_named(tenant, mine, f"fragile-{mine[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead,
        [
            tool_reply("delegate_task", {"member": "nobody", "task": "Anything"}),
            tool_reply("delegate_task", {"member": member["name"], "task": "Try"}),
            text_reply("Recovered."),
        ],
    )
    await fake.script(mine, [error_reply(400, "prompt is too long")])
    team = await make_team(tenant, lead, [member["id"]])
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    assert final["response"] == "Recovered."
    bodies = await fake.bodies(lead)
    unknown = bodies[1]["messages"][-1]["content"][0]
    assert unknown["is_error"] is True
    assert "'nobody' is not a member" in unknown["content"] and member["name"] in unknown["content"]
    failed = bodies[2]["messages"][-1]["content"][0]
    assert failed["is_error"] is True and "prompt is too long" in failed["content"]
    (run,) = await member_runs(tenant, execution_id)  # the unknown member started nothing
    assert run["status"] == "failed"


async def test_sequential_members_build_on_each_other(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    temporal_address: str,
) -> None:
    lead, one, two = (uuid.uuid4().hex for _ in range(3))
    drafter = await agent_named(tenant, one, f"drafter-{one[:4]}")
    editor = await agent_named(tenant, two, f"editor-{two[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(one, [text_reply("A rough draft.")])
    await fake.script(two, [text_reply("A polished text.")])
    team = await make_team(
        tenant, lead, [drafter["id"], editor["id"]], coordination_type="sequential"
    )
    execution_id = await execute_team(tenant, team["id"], running_queue["id"], "Write it")
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    assert final["response"] == "A polished text."
    runs = await member_runs(tenant, execution_id)
    assert [run["entity_id"] for run in runs] == [drafter["id"], editor["id"]]
    assert runs[0]["prompt"] == "Write it"
    assert "A rough draft." in runs[1]["prompt"] and drafter["name"] in runs[1]["prompt"]
    assert await fake.requests(lead) == []  # a sequential team without a model calls none
    await record_history(tenant, temporal_address, execution_id, "team_sequential", "team")


async def test_parallel_members_joined_or_summed_up(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    temporal_address: str,
) -> None:
    lead, one, two = (uuid.uuid4().hex for _ in range(3))
    first = await agent_named(tenant, one, f"optimist-{one[:4]}")
    second = await agent_named(tenant, two, f"pessimist-{two[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(one, [text_reply("Yes."), text_reply("Yes again.")])
    await fake.script(two, [text_reply("No."), text_reply("No again.")])
    joined = await make_team(
        tenant, lead, [first["id"], second["id"]], coordination_type="parallel"
    )
    execution_id = await execute_team(tenant, joined["id"], running_queue["id"], "Will it work?")
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    assert final["response"] == f"**{first['name']}**:\nYes.\n\n**{second['name']}**:\nNo."

    await fake.script(lead, [text_reply("They disagree.")])
    # Moving the members to a team with a model: it sums up.
    summed = await make_team(
        tenant,
        lead,
        [first["id"], second["id"]],
        coordination_type="parallel",
        configuration={"llm": {"model": "anthropic/claude-sonnet-4-5"}},
    )
    execution_id = await execute_team(tenant, summed["id"], running_queue["id"], "Again?")
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    assert final["response"] == "They disagree."
    (synthesis,) = await fake.bodies(lead)
    prompt = synthesis["messages"][0]["content"]
    assert "Yes again." in prompt and "No again." in prompt and "Again?" in prompt
    await record_history(tenant, temporal_address, execution_id, "team_parallel", "team")


async def test_a_team_converses_over_several_turns(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    member = await agent_named(tenant, mine, f"helper-{mine[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead,
        [
            text_reply("First answer."),
            tool_reply("delegate_task", {"member": member["name"], "task": "Check it"}),
            text_reply("Checked: fine."),
        ],
    )
    await fake.script(mine, [text_reply("It is fine.")])
    team = await make_team(tenant, lead, [member["id"]], configuration={"one_shot": False})
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])
    base = f"/api/v1/executions/{execution_id}"
    await wait_answer(tenant, execution_id, "First answer.")
    sent = await tenant.member.post(f"{base}/message", json={"message": "Please check"})
    assert sent.status_code == 202, sent.text
    await wait_answer(tenant, execution_id, "Checked: fine.")
    assert (await tenant.member.post(f"{base}/mark-done")).status_code == 202
    final = await wait_status(tenant, execution_id, "completed")
    assert final["response"] == "Checked: fine."
    second_turn = (await fake.bodies(lead))[1]["messages"]
    assert [m["role"] for m in second_turn] == ["user", "assistant", "user"]
    assert second_turn[-1]["content"] == "Please check"
    session = (await tenant.viewer.get(f"{base}/session")).json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "user", "assistant"]


async def test_pause_holds_the_members_and_cancel_cascades(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    db: Any,
    temporal_address: str,
) -> None:
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    member = await agent_named(tenant, mine, f"slow-{mine[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead, [tool_reply("delegate_task", {"member": member["name"], "task": "Take your time"})]
    )
    await fake.script(mine, [text_reply(LONG_TEXT, delay_per_chunk_ms=100)])
    team = await make_team(tenant, lead, [member["id"]])
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])
    base = f"/api/v1/executions/{execution_id}"

    deadline = asyncio.get_running_loop().time() + 30
    while not [
        e for e in await events_of(db, execution_id) if e["event_type"] == "member_message_chunk"
    ]:
        assert asyncio.get_running_loop().time() < deadline, "no member chunk"
        await asyncio.sleep(0.1)
    (run,) = await member_runs(tenant, execution_id)
    assert (await tenant.member.post(f"{base}/pause")).status_code == 200
    await wait_status(tenant, execution_id, "paused")
    await wait_status(tenant, run["id"], "paused")  # passed on to the running member
    assert (await tenant.member.post(f"{base}/resume")).status_code == 200
    await wait_status(tenant, run["id"], "running")

    cancelled = await tenant.member.post(f"{base}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    await wait_status(tenant, execution_id, "cancelled")
    child = await wait_status(tenant, run["id"], "cancelled")
    assert child["completed_at"] is not None
    assert len(await fake.requests(lead)) == 1  # the leader never got an answer to read
    await record_history(tenant, temporal_address, execution_id, "team_cancelled", "team")


async def test_a_worker_killed_while_a_member_streams(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    live_api: str,
    db: Any,
) -> None:
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    member = await agent_named(tenant, mine, f"steady-{mine[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead,
        [
            tool_reply("delegate_task", {"member": member["name"], "task": "Say it all"}),
            text_reply("Relayed."),
        ],
    )
    reply = text_reply(LONG_TEXT, delay_per_chunk_ms=60)
    await fake.script(mine, [reply, reply])
    team = await make_team(tenant, lead, [member["id"]])
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])
    deadline = asyncio.get_running_loop().time() + 30
    while not [
        e for e in await events_of(db, execution_id) if e["event_type"] == "member_message_chunk"
    ]:
        assert asyncio.get_running_loop().time() < deadline, "no member chunk"
        await asyncio.sleep(0.1)
    running_queue["process"].send_signal(signal.SIGKILL)
    await asyncio.to_thread(running_queue["process"].wait, 10)
    survivor = start_worker_process(
        running_queue["id"], running_queue["worker_key"], live_api, fake_llm
    )
    try:
        final = await wait_status(tenant, execution_id, "completed", "failed", timeout=120)
    finally:
        survivor.send_signal(signal.SIGTERM)
        await asyncio.to_thread(survivor.wait, 30)
    assert final["status"] == "completed", final
    assert final["response"] == "Relayed."
    (run,) = await member_runs(tenant, execution_id)  # one run, not a second one
    assert run["status"] == "completed" and run["response"] == LONG_TEXT
    events = await events_of(db, execution_id)
    kinds = [e["event_type"] for e in events]
    for once in ("tool_started", "tool_completed", "member_message_complete", "done"):
        assert kinds.count(once) == 1, (once, kinds)
    chunks = [e["data"] for e in events if e["event_type"] == "member_message_chunk"]
    last = max(c["attempt"] for c in chunks)
    assert "".join(c["content"] for c in chunks if c["attempt"] == last) == LONG_TEXT
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert (await fake.bodies(lead))[1]["messages"][-1]["content"][0]["content"] == LONG_TEXT


async def test_a_team_without_members_or_on_a_bad_queue_starts_nothing(
    tenant: Tenant, running_queue: dict[str, Any]
) -> None:
    empty = await make_team(tenant, uuid.uuid4().hex, [])
    before = (await tenant.viewer.get("/api/v1/executions")).json()["total"]
    error = assert_error(
        await tenant.member.post(
            f"/api/v1/teams/{empty['id']}/execute",
            json={"prompt": "hi", "worker_queue_id": running_queue["id"]},
        ),
        400,
    )
    assert "no members" in error["message"]
    assert_error(
        await tenant.member.post(
            f"/api/v1/teams/{empty['id']}/execute",
            json={"prompt": "hi", "worker_queue_id": str(uuid.uuid4())},
        ),
        404,
    )
    assert_error(
        await tenant.member.post(f"/api/v1/teams/{empty['id']}/execute", json={"prompt": ""}),
        422,
    )
    assert (await tenant.viewer.get("/api/v1/executions")).json()["total"] == before


async def test_the_member_protocol_trusts_the_database(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    """A worker cannot make a team run delegate to an agent that is not on the team, nor
    reach another queue's team run; the same key answers the same run."""
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    member = await agent_named(tenant, mine, f"m-{mine[:4]}")
    outsider = await agent_named(tenant, mine, f"o-{mine[:4]}")
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(lead, [text_reply("Hello.")])
    team = await make_team(tenant, lead, [member["id"]], configuration={"one_shot": False})
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])
    await wait_status(tenant, execution_id, "waiting_for_input")
    worker = await as_worker(tenant, running_queue["id"])
    path = f"/api/v1/executions/{execution_id}/members"
    refused = await worker.post(
        path, json={"agent_id": outsider["id"], "task": "x", "delegation_key": "k1"}
    )
    assert "not a member" in assert_error(refused, 400)["message"]
    first = await worker.post(
        path, json={"agent_id": member["id"], "task": "x", "delegation_key": "k2"}
    )
    assert first.status_code == 200, first.text
    again = await worker.post(
        path, json={"agent_id": member["id"], "task": "x", "delegation_key": "k2"}
    )
    assert again.json()["execution_id"] == first.json()["execution_id"]
    assert first.json()["input"]["one_shot"] is True
    assert first.json()["input"]["policy"]["team_id"] == team["id"]
    assert_error(
        await tenant.member.post(
            path, json={"agent_id": member["id"], "task": "x", "delegation_key": "k3"}
        ),
        403,
    )
    other_queue = await tenant.member.post(
        f"/api/v1/environments/{running_queue['environment_id']}/worker-queues",
        json={"name": "other"},
    )
    stranger = await as_worker(tenant, other_queue.json()["id"])
    assert_error(
        await stranger.post(
            path, json={"agent_id": member["id"], "task": "x", "delegation_key": "k4"}
        ),
        404,
    )
    await tenant.member.post(f"/api/v1/executions/{execution_id}/cancel")


async def test_a_policy_that_denies_a_member_is_an_error_result(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    """A member's run is checked like any run: a policy on the member that denies executions
    refuses that delegation (the leader hears why), and starts nothing."""
    lead, mine = uuid.uuid4().hex, uuid.uuid4().hex
    member = await agent_named(tenant, mine, f"barred-{mine[:4]}")
    await attach_policy(tenant, member["id"], DENY_EXECUTION)
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(
        lead,
        [
            tool_reply("delegate_task", {"member": member["name"], "task": "Anything"}),
            text_reply("The member may not run."),
        ],
    )
    team = await make_team(tenant, lead, [member["id"]])
    execution_id = await execute_team(tenant, team["id"], running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    refused = (await fake.bodies(lead))[1]["messages"][-1]["content"][0]
    assert refused["is_error"] is True
    assert "no executions on Fridays" in refused["content"], refused
    assert await member_runs(tenant, execution_id) == []
    assert await fake.requests(mine) == []
