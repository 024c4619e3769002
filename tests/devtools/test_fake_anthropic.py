"""The fake Anthropic API, exercised through the real `anthropic` SDK and the Claude Code CLI."""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import MessageParam, TextBlock, ToolUseBlock

from controlplane.devtools.fake_anthropic import (
    DEFAULT_REPLY_PREFIX,
    AsyncFakeAnthropicClient,
    FakeAnthropicClient,
    FakeAnthropicServer,
    error_reply,
    text_reply,
    tool_reply,
)

MODEL = "claude-sonnet-4-6"
WEATHER_TOOL: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeAnthropicServer) -> FakeAnthropicClient:
    return FakeAnthropicClient(fake_server.base_url)


@pytest.fixture
async def sdk(fake_server: FakeAnthropicServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=fake_server.base_url, api_key="test", max_retries=0)
    yield client
    await client.close()


def token() -> str:
    return f"tok-{uuid.uuid4().hex[:12]}"


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


async def test_scripted_text_reply(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    tok = token()
    fake.script(tok, [text_reply("Hello there, friend.", usage={"input_tokens": 42})])
    message = await sdk.messages.create(model=MODEL, max_tokens=100, messages=user(f"hi {tok}"))
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert isinstance(message.content[0], TextBlock)
    assert message.content[0].text == "Hello there, friend."
    assert message.usage.input_tokens == 42
    assert message.usage.output_tokens == 5  # ceil(20 chars / 4)
    assert message.usage.cache_read_input_tokens == 0


async def test_streamed_text_arrives_in_chunks(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    tok = token()
    text = "The quick brown fox jumps over the lazy dog, twice over."
    fake.script(tok, [text_reply(text)])
    pieces: list[str] = []
    async with sdk.messages.stream(model=MODEL, max_tokens=100, messages=user(tok)) as stream:
        async for piece in stream.text_stream:
            pieces.append(piece)
        final = await stream.get_final_message()
    assert len(pieces) > 2
    assert "".join(pieces) == text
    assert isinstance(final.content[0], TextBlock) and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == (len(text) + 3) // 4


async def test_tool_use_reply(fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic) -> None:
    tok = token()
    city = {"city": "Zürich, with a rather long name to split"}
    fake.script(tok, [tool_reply("get_weather", city, text="Checking."), tool_reply("x", {})])
    message = await sdk.messages.create(
        model=MODEL, max_tokens=100, messages=user(tok), tools=[WEATHER_TOOL]
    )
    assert message.stop_reason == "tool_use"
    assert isinstance(message.content[0], TextBlock) and message.content[0].text == "Checking."
    block = message.content[1]
    assert isinstance(block, ToolUseBlock)
    assert block.id.startswith("toolu_") and block.name == "get_weather" and block.input == city

    # Streamed: input_json_delta pieces are reassembled by the SDK.
    fake.script(tok, [tool_reply("get_weather", city)])
    async with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=user(tok), tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_message()
    # The second scripted reply ("x") came first: replies are consumed in order.
    assert isinstance(final.content[0], ToolUseBlock) and final.content[0].name == "x"
    async with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=user(tok), tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert len(final.content) == 1
    assert isinstance(final.content[0], ToolUseBlock) and final.content[0].input == city


async def test_sse_wire_order(fake: FakeAnthropicClient, fake_server: FakeAnthropicServer) -> None:
    tok = token()
    fake.script(tok, [tool_reply("get_weather", {"city": "Paris"}, text="Let me look that up.")])
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": user(tok)}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=fake_server.base_url) as http:
        response = await http.post("/v1/messages?beta=true", json=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[tuple[str, dict[str, object]]] = []
    for frame in response.text.strip().split("\n\n"):
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == event_line.removeprefix("event: ")
        events.append((data["type"], data))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == 2 == kinds.count("content_block_stop")
    deltas = [data["delta"] for kind, data in events if kind == "content_block_delta"]
    assert isinstance(deltas[0], dict) and deltas[0]["type"] == "text_delta"
    json_parts = [d["partial_json"] for d in deltas if isinstance(d, dict) and "partial_json" in d]
    assert len(json_parts) > 1 and json.loads("".join(map(str, json_parts))) == {"city": "Paris"}
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
    ],
)
async def test_scripted_errors(
    fake: FakeAnthropicClient,
    sdk: anthropic.AsyncAnthropic,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    tok = token()
    fake.script(tok, [error_reply(status, "scripted failure")])
    with pytest.raises(error_class) as caught:
        await sdk.messages.create(model=MODEL, max_tokens=10, messages=user(tok))
    assert caught.value.status_code == status
    assert caught.value.body == {
        "type": "error",
        "error": {"type": error_type, "message": "scripted failure"},
        "request_id": caught.value.request_id,
    }
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"


async def test_fail_once_then_succeed_with_retries(
    fake: FakeAnthropicClient, fake_server: FakeAnthropicServer
) -> None:
    tok = token()
    fake.script(tok, [error_reply(529, times=1), text_reply("recovered")])
    client = anthropic.AsyncAnthropic(base_url=fake_server.base_url, api_key="t", max_retries=2)
    async with client:
        message = await client.messages.create(model=MODEL, max_tokens=10, messages=user(tok))
    assert isinstance(message.content[0], TextBlock) and message.content[0].text == "recovered"
    assert [r["status"] for r in fake.requests(tok)] == [529, 200]


async def test_error_mid_stream(fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic) -> None:
    tok = token()
    fake.script(tok, [{"error": {"status": 529, "in_stream": True}}])
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with sdk.messages.stream(model=MODEL, max_tokens=10, messages=user(tok)) as stream:
            await stream.get_final_message()


async def test_default_reply_without_script(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    tok = token()
    fake.script(tok, [text_reply("scripted")])
    first = await sdk.messages.create(model=MODEL, max_tokens=100, messages=user(f"a {tok}"))
    second = await sdk.messages.create(model=MODEL, max_tokens=100, messages=user(f"b {tok}"))
    assert isinstance(first.content[0], TextBlock) and first.content[0].text == "scripted"
    assert isinstance(second.content[0], TextBlock)
    assert second.content[0].text == f"{DEFAULT_REPLY_PREFIX}b {tok}"
    assert second.stop_reason == "end_turn"


async def test_concurrent_scripts_do_not_interfere(
    fake_server: FakeAnthropicServer, sdk: anthropic.AsyncAnthropic
) -> None:
    fake = AsyncFakeAnthropicClient(fake_server.base_url)
    tokens = [token() for _ in range(2)]
    for tok in tokens:
        await fake.script(tok, [text_reply(f"{tok} {i}", delay_per_chunk_ms=5) for i in range(3)])

    async def converse(tok: str) -> list[str]:
        texts = []
        for _ in range(3):
            async with sdk.messages.stream(model=MODEL, max_tokens=50, messages=user(tok)) as s:
                texts.append(await s.get_final_text())
        return texts

    results = await asyncio.gather(*(converse(tok) for tok in tokens))
    for tok, texts in zip(tokens, results, strict=True):
        assert texts == [f"{tok} 0", f"{tok} 1", f"{tok} 2"]
        assert len(await fake.requests(tok)) == 3


async def test_request_recording(fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic) -> None:
    tok = token()
    fake.script(tok, [tool_reply("get_weather", {"city": "Oslo"}), text_reply("Cold.")])
    messages: list[MessageParam] = user(f"Weather in Oslo? {tok}")
    first = await sdk.messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=messages, tools=[WEATHER_TOOL]
    )
    tool_use = first.content[0]
    assert isinstance(tool_use, ToolUseBlock)
    messages += [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": tool_use.id,
                    "name": tool_use.name,
                    "input": tool_use.input,
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "-4 C"}],
        },
    ]
    await sdk.messages.create(model=MODEL, max_tokens=100, messages=messages, tools=[WEATHER_TOOL])
    bodies = fake.bodies(tok)
    assert len(bodies) == 2
    assert bodies[0]["system"] == "Be brief." and bodies[0]["tools"][0]["name"] == "get_weather"
    result_block = bodies[1]["messages"][-1]["content"][0]
    assert result_block == {"type": "tool_result", "tool_use_id": tool_use.id, "content": "-4 C"}
    fake.reset(tok)
    assert fake.requests(tok) == []


async def test_request_validation(fake_server: FakeAnthropicServer) -> None:
    good = {"model": MODEL, "max_tokens": 5, "messages": user("x")}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=fake_server.base_url) as http:
        no_key = await http.post("/v1/messages", json=good, headers={"anthropic-version": "x"})
        assert no_key.status_code == 401
        assert no_key.json()["error"]["type"] == "authentication_error"
        bearer = {"authorization": "Bearer k", "anthropic-version": "2023-06-01"}
        assert (await http.post("/v1/messages", json=good, headers=bearer)).status_code == 200
        for missing in ("model", "max_tokens", "messages"):
            body = {k: v for k, v in good.items() if k != missing}
            bad = await http.post("/v1/messages", json=body, headers=headers)
            assert bad.status_code == 400
            assert bad.json()["type"] == "error"
            assert bad.json()["error"] == {
                "type": "invalid_request_error",
                "message": f"{missing}: Field required",
            }
        bad_role = {**good, "messages": [{"role": "robot", "content": "x"}]}
        assert (await http.post("/v1/messages", json=bad_role, headers=headers)).status_code == 400
        system_turn = {
            **good,
            "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "metadata": {"user_id": "u"},
            "tool_choice": {"type": "auto"},
        }
        ok = await http.post("/v1/messages?beta=true", json=system_turn, headers=headers)
        assert ok.status_code == 200


async def test_max_tokens_truncates(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    tok = token()
    fake.script(tok, [text_reply("word " * 40)])
    message = await sdk.messages.create(model=MODEL, max_tokens=3, messages=user(tok))
    assert message.stop_reason == "max_tokens"
    assert isinstance(message.content[0], TextBlock) and len(message.content[0].text) == 12


async def test_delay_per_chunk_slows_the_stream(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    tok = token()
    fake.script(tok, [text_reply("one two three four five six", delay_per_chunk_ms=30)])
    started = time.monotonic()
    async with sdk.messages.stream(model=MODEL, max_tokens=50, messages=user(tok)) as stream:
        first = await anext(aiter(stream.text_stream))
        first_at = time.monotonic() - started
        await stream.get_final_message()
    assert (
        first
        and "one two three four five six".startswith(first)
        and first != "one two three four five six"
    )
    assert time.monotonic() - started > first_at  # later chunks were still on their way


def test_zero_latency_ignores_delays() -> None:
    with FakeAnthropicServer(zero_latency=True) as server:
        fake = FakeAnthropicClient(server.base_url)
        fake.script("slow", [text_reply("a b c d e f", delay_per_chunk_ms=10_000)])
        client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
        with client.messages.stream(model=MODEL, max_tokens=9, messages=user("slow")) as stream:
            assert stream.get_final_text() == "a b c d e f"
        client.close()


async def test_claude_code_cli_one_turn(fake: FakeAnthropicClient, tmp_path: Path) -> None:
    claude_agent_sdk = pytest.importorskip("claude_agent_sdk")
    from claude_agent_sdk import AssistantMessage, ClaudeAgentOptions, ResultMessage

    cli = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    if not cli.exists():
        pytest.skip("claude-agent-sdk has no bundled CLI on this platform")
    tok = token()
    fake.script(tok, [text_reply("Hello from the fake model.")])
    env = {
        "ANTHROPIC_BASE_URL": fake.base_url,
        "ANTHROPIC_API_KEY": "test",
        "HOME": str(tmp_path),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
        "API_TIMEOUT_MS": "5000",
    }
    options = ClaudeAgentOptions(env=env, cwd=str(tmp_path), max_turns=1, allowed_tools=[])
    texts: list[str] = []
    result: ResultMessage | None = None
    async with asyncio.timeout(60):
        async for message in claude_agent_sdk.query(prompt=f"Say hi {tok}", options=options):
            if isinstance(message, AssistantMessage):
                texts += [b.text for b in message.content if hasattr(b, "text")]
            elif isinstance(message, ResultMessage):
                result = message
    assert texts == ["Hello from the fake model."]
    assert result is not None and not result.is_error
    recorded = fake.requests(tok)
    assert recorded and recorded[0]["query"] == "beta=true" and recorded[0]["body"]["stream"]


# --- forced tool choice: answered with input valid against the tool's schema -------------------

PLAN_SCHEMA: dict[str, object] = {
    "type": "object",
    "$defs": {
        "Step": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1, "maximum": 9},
                "kind": {"enum": ["build", "test"]},
                "owner": {"anyOf": [{"type": "string", "enum": ["ops-bot"]}, {"type": "null"}]},
                "note": {"type": "string", "minLength": 12, "maxLength": 20},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Step"}},
            },
            "required": ["id", "kind", "owner", "note", "children"],
        }
    },
    "properties": {
        "title": {"type": "string"},
        "hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "ready": {"type": "boolean"},
        "when": {"type": "string", "format": "date-time"},
        "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "minItems": 2},
        "level": {"type": ["integer", "null"], "multipleOf": 5, "minimum": 3},
        "optional": {"type": "string"},
    },
    "required": ["title", "hours", "ready", "when", "steps", "level"],
}
SUBMIT_TOOL: anthropic.types.ToolParam = {
    "name": "submit_plan",
    "description": "Submit the plan",
    "input_schema": PLAN_SCHEMA,
}


async def test_forced_tool_choice_gets_a_valid_call(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    jsonschema = importlib.import_module("jsonschema")  # untyped; comes with claude-agent-sdk
    tools = [WEATHER_TOOL, SUBMIT_TOOL]
    message = await sdk.messages.create(
        model=MODEL,
        max_tokens=1000,
        messages=user(f"plan it {token()}"),
        tools=tools,
        tool_choice={"type": "tool", "name": "submit_plan"},
    )
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert isinstance(block, ToolUseBlock) and block.name == "submit_plan"
    jsonschema.validate(block.input, PLAN_SCHEMA)
    assert isinstance(block.input, dict)
    steps: list[dict[str, Any]] = block.input["steps"]  # type: ignore[assignment]
    assert block.input["level"] == 5 and steps[0]["owner"] == "ops-bot"
    assert "optional" not in block.input  # only what is required

    # Streamed, the same input arrives in input_json_delta pieces; `any` forces the first tool.
    async with sdk.messages.stream(
        model=MODEL,
        max_tokens=1000,
        messages=user(f"plan it {token()}"),
        tools=[SUBMIT_TOOL, WEATHER_TOOL],
        tool_choice={"type": "any"},
    ) as stream:
        final = await stream.get_final_message()
    (streamed,) = final.content
    assert isinstance(streamed, ToolUseBlock) and streamed.input == block.input


async def test_scripted_replies_win_over_the_forced_tool(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    tok = token()
    invalid = tool_reply("submit_plan", {"title": 5})
    # A reply with neither text nor tool calls (here: a delay) gets the generated call.
    fake.script(tok, [invalid, {"delay_per_chunk_ms": 1}])
    answers = []
    for _ in range(2):
        message = await sdk.messages.create(
            model=MODEL,
            max_tokens=1000,
            messages=user(tok),
            tools=[SUBMIT_TOOL],
            tool_choice={"type": "tool", "name": "submit_plan"},
        )
        block = message.content[0]
        assert isinstance(block, ToolUseBlock)
        answers.append(block.input)
    assert answers[0] == {"title": 5}
    assert isinstance(answers[1], dict) and answers[1]["title"] == "fake title"


async def test_tool_choice_naming_no_tool_is_refused(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="not found in tools"):
        await sdk.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=user("hi"),
            tools=[WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "submit_plan"},
        )


async def test_waiting_for_requests(
    fake: FakeAnthropicClient, sdk: anthropic.AsyncAnthropic
) -> None:
    tok = token()
    waiting = asyncio.create_task(asyncio.to_thread(fake.wait_requests, tok, 2, 20.0))
    for _ in range(2):
        await sdk.messages.create(model=MODEL, max_tokens=10, messages=user(tok))
    assert len(await waiting) == 2
    with pytest.raises(TimeoutError):
        fake.wait_requests(tok, 3, timeout=0.2)
