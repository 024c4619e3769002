"""A fake Anthropic Messages API that speaks the real wire format, scripted over HTTP.

It stands in for the Anthropic API, which this machine cannot reach, wherever a base URL goes:
the `anthropic` SDK (`base_url=`), the Claude Code CLI (`ANTHROPIC_BASE_URL`), worker processes.
Because workers are separate processes, tests script replies over HTTP, not in-process:

    POST   /_fake/scripts   {"match": "<token>", "replies": [<reply>, ...]}
    GET    /_fake/scripts   pending replies per token
    DELETE /_fake/scripts[?match=<token>]   forget scripts and recorded requests
    GET    /_fake/requests[?match=<token>]  recorded request bodies
           [&at_least=N&wait_s=S]  first wait (up to S s) until N such requests arrived
    DELETE /_fake/requests[?match=<token>]

A Messages request takes the next pending reply of the first script whose token appears in any
string of its `system` or `messages`; so each test puts a unique token in its prompt and tests
never see each other's replies. With no pending reply the answer is a deterministic default,
`Fake reply to: <last user text>`, so an unscripted `dev --fake-llm` run still answers.

A request that forces a tool (`tool_choice` `{"type": "tool", "name": ...}`, or `{"type":
"any"}`: its first tool) is answered, as the real API does, with a call of that tool whose input
is valid against the tool's `input_schema` (`schema_example`: required properties, `minItems`
items, the first enum value, bounds, `$ref`/`$defs`, `anyOf`). A scripted reply still wins: one
with text or tool calls is sent as scripted (so a test can script an invalid answer); one with
neither (only a delay or usage, e.g. `{"delay_per_chunk_ms": 200}`) gets the generated call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# --- Script shapes (what tests send to POST /_fake/scripts) -----------------------------------


class ToolCall(TypedDict):
    name: str
    input: dict[str, Any]


class FakeUsage(TypedDict, total=False):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class FakeError(TypedDict):
    status: int
    type: NotRequired[str]
    message: NotRequired[str]
    retry_after: NotRequired[int]
    in_stream: NotRequired[bool]


class FakeReply(TypedDict, total=False):
    text: str
    thinking: str
    tool_calls: list[ToolCall]
    stop_reason: Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal"]
    usage: FakeUsage
    delay_per_chunk_ms: int
    error: FakeError
    times: int


ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

DEFAULT_ERROR_MESSAGES: dict[str, str] = {
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
    "authentication_error": "invalid x-api-key",
    "invalid_request_error": "Invalid request",
}

DEFAULT_REPLY_PREFIX = "Fake reply to: "
DEFAULT_REPLY_MAX_CHARS = 200


def text_reply(text: str, **extra: Any) -> FakeReply:
    reply: FakeReply = {"text": text}
    reply.update(extra)  # type: ignore[typeddict-item]
    return reply


def tool_reply(name: str, tool_input: dict[str, Any], text: str = "") -> FakeReply:
    return {"text": text, "tool_calls": [{"name": name, "input": tool_input}]}


def error_reply(
    status: int, message: str | None = None, *, times: int = 1, retry_after: int | None = None
) -> FakeReply:
    error: FakeError = {"status": status}
    if message is not None:
        error["message"] = message
    if retry_after is not None:
        error["retry_after"] = retry_after
    return {"error": error, "times": times}


# --- Server state -----------------------------------------------------------------------------


class ScriptError(ValueError):
    """A script posted to /_fake/scripts is malformed."""


@dataclass
class _Script:
    match: str
    replies: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Recorded:
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    status: int
    text: str  # every string of system + messages, joined, for token matching


@dataclass
class FakeState:
    zero_latency: bool = False
    chunk_delay_ms: int = 0
    scripts: list[_Script] = field(default_factory=list)
    requests: list[_Recorded] = field(default_factory=list)
    # Set (and replaced) at each recorded request, for readers waiting for one; made on the
    # server's event loop, where it is used.
    recorded: asyncio.Event | None = None

    def add_script(self, match: str, replies: list[dict[str, Any]]) -> _Script:
        for script in self.scripts:
            if script.match == match:
                script.replies.extend(replies)
                return script
        script = _Script(match, list(replies))
        self.scripts.append(script)
        return script

    def next_reply(self, text: str) -> dict[str, Any] | None:
        for script in self.scripts:
            if script.replies and script.match in text:
                reply = script.replies[0]
                remaining = int(reply.get("times", 1)) - 1
                if remaining > 0:
                    script.replies[0] = {**reply, "times": remaining}
                else:
                    script.replies.pop(0)
                return reply
        return None

    def reset(self, match: str | None) -> None:
        if match is None:
            self.scripts.clear()
            self.requests.clear()
        else:
            self.scripts = [s for s in self.scripts if s.match != match]
            self.requests = [r for r in self.requests if match not in r.text]


def _validate_reply(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScriptError("each reply must be an object")
    times = raw.get("times", 1)
    if not isinstance(times, int) or times < 1:
        raise ScriptError("times must be a positive integer")
    if "error" in raw:
        error = raw["error"]
        if not isinstance(error, dict) or not isinstance(error.get("status"), int):
            raise ScriptError("error must be an object with an integer status")
        status = error["status"]
        if status < 400:
            raise ScriptError("error.status must be >= 400")
        return {
            "times": times,
            "error": {
                "status": status,
                "type": str(error.get("type") or ERROR_TYPES.get(status, "api_error")),
                "message": str(error.get("message") or ""),
                "retry_after": error.get("retry_after"),
                "in_stream": bool(error.get("in_stream", False)),
            },
        }
    text = raw.get("text", "")
    if not isinstance(text, str):
        raise ScriptError("text must be a string")
    thinking = raw.get("thinking")
    if thinking is not None and not isinstance(thinking, str):
        raise ScriptError("thinking must be a string")
    calls = raw.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ScriptError("tool_calls must be a list")
    for call in calls:
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("name"), str)
            or not isinstance(call.get("input", {}), dict)
        ):
            raise ScriptError("each tool call needs a string name and an object input")
    usage = raw.get("usage") or {}
    if not isinstance(usage, dict) or not all(isinstance(v, int) for v in usage.values()):
        raise ScriptError("usage must map token fields to integers")
    delay = raw.get("delay_per_chunk_ms", None)
    if delay is not None and (not isinstance(delay, int | float) or delay < 0):
        raise ScriptError("delay_per_chunk_ms must be a non-negative number")
    return {
        "times": times,
        "text": text,
        "thinking": thinking,
        "tool_calls": [{"name": c["name"], "input": c.get("input", {})} for c in calls],
        "stop_reason": raw.get("stop_reason"),
        "usage": usage,
        "delay_per_chunk_ms": delay,
    }


# --- Wire format helpers ----------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _request_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    return "\n".join(_strings([body.get("system"), body.get("messages")]))


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": _new_id("req_"),
    }


def _error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = _error_body(error_type, message)
    all_headers = {"request-id": body["request_id"], **(headers or {})}
    return JSONResponse(body, status_code=status, headers=all_headers)


def _validate_request(body: Any) -> str | None:
    """The first problem the real API would report, or None."""
    if not isinstance(body, dict):
        return "Input should be an object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a positive integer"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{index}: Input should be a valid dictionary"
        # The Claude Code CLI puts a role "system" turn inside messages; tolerate it.
        if message.get("role") not in ("user", "assistant", "system"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        if "content" not in message:
            return f"messages.{index}.content: Field required"
        if not isinstance(message["content"], str | list):
            return f"messages.{index}.content: Input should be a valid string or list"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "tools: Input should be a valid list"
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICE_TYPES:
            return "tool_choice: Input should be an object with type auto, any, tool or none"
        named = [t.get("name") for t in tools or [] if isinstance(t, dict)]
        if choice["type"] in ("tool", "any") and not named:
            return "tool_choice: a forced tool choice needs tools"
        if choice["type"] == "tool" and choice.get("name") not in named:
            return f"tool_choice.name: Tool '{choice.get('name')}' not found in tools"
    return None


TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a request's `tool_choice` makes the model call, if it forces one."""
    choice = body.get("tool_choice")
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    if not isinstance(choice, dict) or not tools:
        return None
    if choice.get("type") == "any":
        return tools[0]
    if choice.get("type") == "tool":
        return next((t for t in tools if t.get("name") == choice.get("name")), None)
    return None


# Deeper than this, a schema example takes the shortest way out (null, no items, no property).
MAX_EXAMPLE_DEPTH = 24


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _number_example(schema: dict[str, Any], integer: bool) -> float | int:
    low = schema.get("minimum")
    if low is None and "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + (1 if integer else 0.5)
    high = schema.get("maximum")
    if high is None and "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - (1 if integer else 0.5)
    value: float = low if low is not None else 1
    if high is not None and value > high:
        value = high
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        value = math.ceil(value / step) * step
    return math.ceil(value) if integer else float(value)


def _string_example(schema: dict[str, Any], name: str) -> str:
    formats = {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        "date-time": "2025-01-01T00:00:00Z",
        "date": "2025-01-01",
        "time": "00:00:00",
        "email": "fake@example.com",
        "uri": "https://example.com/",
    }
    text = formats.get(str(schema.get("format")), f"fake {name}")
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def schema_example(
    schema: Any, root: dict[str, Any] | None = None, name: str = "value", depth: int = 0
) -> Any:
    """A value valid against the JSON schema `schema` (as a model answering a forced tool call
    would send): required properties only, `minItems` items, first enum values, bounds."""
    if not isinstance(schema, dict):
        return None
    root = schema if root is None else root
    if "$ref" in schema:
        target = _resolve_ref(root, str(schema["$ref"]))
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return schema_example({**target, **rest}, root, name, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict)]
        if options:
            nullable = [o for o in options if o.get("type") == "null"]
            others = [o for o in options if o.get("type") != "null"]
            if depth >= MAX_EXAMPLE_DEPTH and nullable:
                return None
            return schema_example((others or nullable)[0], root, name, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {"properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve_ref(root, part["$ref"]) if "$ref" in part else part
            merged["properties"].update(part.get("properties") or {})
            merged["required"] += part.get("required") or []
            merged.setdefault("type", part.get("type"))
        return schema_example(merged, root, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            key: schema_example(properties.get(key, {}), root, key, depth + 1)
            for key in schema.get("required") or []
        }
    if kind == "array":
        count = schema.get("minItems", 0) if isinstance(schema.get("minItems"), int) else 0
        if count == 0 or depth >= MAX_EXAMPLE_DEPTH * 2:
            return []
        items = [schema_example(schema.get("items", {}), root, name, depth + 1)] * count
        if schema.get("uniqueItems") and all(isinstance(item, str) for item in items):
            items = [f"{item} {index + 1}" for index, item in enumerate(items)]
        return items
    if kind in ("integer", "number"):
        return _number_example(schema, kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string_example(schema, name)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts: list[str] = [
            b["text"]
            for b in content or []
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        if texts:
            return texts[-1]
        results = [
            " ".join(_strings(b.get("content")))
            for b in content or []
            if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        if results:
            return results[-1]
    return ""


@dataclass
class _Planned:
    """A reply turned into content blocks, stop reason and usage."""

    blocks: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]
    delay_s: float


def _plan(state: FakeState, body: dict[str, Any], reply: dict[str, Any] | None) -> _Planned:
    tool = forced_tool(body)
    if tool is not None and (reply is None or not (reply.get("text") or reply.get("tool_calls"))):
        schema = tool.get("input_schema") or {"type": "object"}
        call = {"name": tool.get("name"), "input": schema_example(schema)}
        reply = {"usage": {}, **(reply or {}), "text": "", "tool_calls": [call]}
    if reply is None:
        last = " ".join(_last_user_text(body["messages"]).split())
        if len(last) > DEFAULT_REPLY_MAX_CHARS:
            last = last[:DEFAULT_REPLY_MAX_CHARS] + "..."
        reply = {"text": DEFAULT_REPLY_PREFIX + last, "tool_calls": [], "usage": {}}
    text: str = reply.get("text") or ""
    calls: list[dict[str, Any]] = reply.get("tool_calls") or []
    stop_reason: str | None = reply.get("stop_reason")
    stop_sequence: str | None = None
    if stop_reason is None:
        stop_reason = "tool_use" if calls else "end_turn"
        for sequence in body.get("stop_sequences") or []:
            if isinstance(sequence, str) and sequence and sequence in text:
                text = text[: text.index(sequence)]
                calls, stop_reason, stop_sequence = [], "stop_sequence", sequence
                break
        if estimate_tokens(len(text)) > body["max_tokens"]:
            text = text[: body["max_tokens"] * 4]
            calls, stop_reason = [], "max_tokens"

    blocks: list[dict[str, Any]] = []
    thinking = reply.get("thinking")
    if thinking:
        signature = "fake-signature-" + uuid.uuid4().hex[:16]
        blocks.append({"type": "thinking", "thinking": thinking, "signature": signature})
    if text or not calls:
        blocks.append({"type": "text", "text": text})
    for call in calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": _new_id("toolu_"),
                "name": call["name"],
                "input": call["input"],
            }
        )

    output_chars = len(text) + len(thinking or "")
    output_chars += sum(len(call["name"]) + len(json.dumps(call["input"])) for call in calls)
    input_chars = len(_request_text(body)) + len(json.dumps(body.get("tools") or []))
    usage: dict[str, Any] = {
        "input_tokens": estimate_tokens(input_chars),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": estimate_tokens(output_chars),
    }
    usage.update(reply.get("usage") or {})
    usage["cache_creation"] = {
        "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"],
        "ephemeral_1h_input_tokens": 0,
    }
    usage["service_tier"] = "standard"

    delay_ms = reply.get("delay_per_chunk_ms")
    if delay_ms is None:
        delay_ms = state.chunk_delay_ms
    return _Planned(
        blocks, stop_reason, stop_sequence, usage, 0.0 if state.zero_latency else delay_ms / 1000
    )


def _message(body: dict[str, Any], planned: _Planned) -> dict[str, Any]:
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": planned.blocks,
        "stop_reason": planned.stop_reason,
        "stop_sequence": planned.stop_sequence,
        "usage": planned.usage,
    }


def _chunks(text: str, size: int) -> list[str]:
    """Split text into pieces of about `size` characters, cutting after whitespace."""
    pieces: list[str] = []
    current = ""
    for word in re.findall(r"\S+\s*|\s+", text):
        current += word
        if len(current) >= size:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces or [text]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _stream_events(
    message: dict[str, Any], planned: _Planned, error: dict[str, Any] | None
) -> Iterator[bytes]:
    usage = planned.usage
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    yield _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                **message,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        },
    )
    if error is not None:
        yield _sse("error", _error_body(error["type"], error["message"]))
        return
    yield _sse("ping", {"type": "ping"})
    for index, block in enumerate(planned.blocks):
        kind = block["type"]
        if kind == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"], 12)]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": c} for c in _chunks(block["thinking"], 12)
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            start = {**block, "input": {}}
            encoded = json.dumps(block["input"])
            deltas = [
                {"type": "input_json_delta", "partial_json": encoded[i : i + 16]}
                for i in range(0, len(encoded), 16)
            ]
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        for delta in deltas:
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": planned.stop_reason, "stop_sequence": planned.stop_sequence},
            "usage": {
                key: usage[key]
                for key in (
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                    "output_tokens",
                )
            },
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})


# --- The app ----------------------------------------------------------------------------------


def create_fake_app(*, zero_latency: bool = False, chunk_delay_ms: int = 0) -> Starlette:
    """The fake API. `zero_latency` ignores every scripted delay (for benchmarks);
    `chunk_delay_ms` is the default pause between stream events when a reply sets none."""
    state = FakeState(zero_latency=zero_latency, chunk_delay_ms=chunk_delay_ms)

    def record(request: Request, body: Any, status: int) -> None:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.startswith(("anthropic-", "x-stainless-", "user-agent", "content-type"))
        }
        state.requests.append(
            _Recorded(
                request.url.path, request.url.query, headers, body, status, _request_text(body)
            )
        )
        if state.recorded is not None:
            state.recorded.set()
        state.recorded = asyncio.Event()

    async def messages(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
            record(request, raw.decode(errors="replace"), 400)
            return _error_response(
                400,
                "invalid_request_error",
                "There was an error parsing the body of your request as JSON.",
            )
        if not _has_credentials(request):
            record(request, body, 401)
            return _error_response(401, "authentication_error", "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            record(request, body, 400)
            return _error_response(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        problem = _validate_request(body)
        if problem is not None:
            record(request, body, 400)
            return _error_response(400, "invalid_request_error", problem)

        reply = state.next_reply(_request_text(body))
        stream = bool(body.get("stream"))
        error = reply.get("error") if reply else None
        if error is not None and not (stream and error["in_stream"]):
            record(request, body, error["status"])
            headers: dict[str, str] = {}
            if error["status"] == 429 or error["retry_after"] is not None:
                retry_after = error["retry_after"] if error["retry_after"] is not None else 1
                headers["retry-after"] = str(0 if state.zero_latency else retry_after)
            message = error["message"] or DEFAULT_ERROR_MESSAGES.get(error["type"], "Error")
            return _error_response(error["status"], error["type"], message, headers)

        planned = _plan(state, body, None if error is not None else reply)
        if error is not None:
            message = error["message"] or DEFAULT_ERROR_MESSAGES.get(error["type"], "Error")
            error = {**error, "message": message}
        record(request, body, 200)
        message_json = _message(body, planned)
        request_id = _new_id("req_")
        if not stream:
            return JSONResponse(message_json, headers={"request-id": request_id})

        async def events() -> AsyncIterator[bytes]:
            for chunk in _stream_events(message_json, planned, error):
                yield chunk
                if planned.delay_s:
                    await asyncio.sleep(planned.delay_s)

        return StreamingResponse(
            events(),
            media_type="text/event-stream; charset=utf-8",
            headers={"request-id": request_id, "cache-control": "no-cache"},
        )

    async def count_tokens(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not _has_credentials(request):
            return _error_response(401, "authentication_error", "x-api-key header is required")
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            return _error_response(400, "invalid_request_error", "messages: Field required")
        chars = len(_request_text(body)) + len(json.dumps(body.get("tools") or []))
        return JSONResponse({"input_tokens": estimate_tokens(chars)})

    async def models(request: Request) -> Response:
        data = [
            {
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for name in ("claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5")
        ]
        return JSONResponse(
            {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        )

    async def post_script(request: Request) -> Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ScriptError("body must be an object")
            match = body.get("match")
            if not isinstance(match, str) or not match:
                raise ScriptError("match must be a non-empty string")
            replies = body.get("replies")
            if not isinstance(replies, list):
                raise ScriptError("replies must be a list")
            validated = [_validate_reply(r) for r in replies]
        except (ScriptError, ValueError) as exc:
            return _error_response(400, "invalid_request_error", str(exc))
        script = state.add_script(match, validated)
        return JSONResponse({"match": match, "pending": _pending(script)})

    async def get_scripts(request: Request) -> Response:
        return JSONResponse(
            {"scripts": [{"match": s.match, "pending": _pending(s)} for s in state.scripts]}
        )

    async def delete_scripts(request: Request) -> Response:
        state.reset(request.query_params.get("match"))
        return JSONResponse({"deleted": True})

    async def get_requests(request: Request) -> Response:
        match = request.query_params.get("match")
        try:
            at_least = int(request.query_params.get("at_least", "0"))
            wait_s = float(request.query_params.get("wait_s", "0"))
        except ValueError:
            return _error_response(400, "invalid_request_error", "at_least, wait_s: numbers")

        def found_now() -> list[_Recorded]:
            return [r for r in state.requests if match is None or match in r.text]

        found = found_now()
        deadline = time.monotonic() + wait_s
        while len(found) < at_least and time.monotonic() < deadline:
            if state.recorded is None:
                state.recorded = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.recorded.wait(), deadline - time.monotonic())
            found = found_now()
        return JSONResponse(
            {
                "requests": [
                    {
                        "path": r.path,
                        "query": r.query,
                        "headers": r.headers,
                        "status": r.status,
                        "body": r.body,
                    }
                    for r in found
                ]
            }
        )

    async def delete_requests(request: Request) -> Response:
        match = request.query_params.get("match")
        state.requests = [r for r in state.requests if match is not None and match not in r.text]
        return JSONResponse({"deleted": True})

    async def not_found(request: Request) -> Response:
        raw = await request.body()
        record(request, raw.decode(errors="replace"), 404)
        return _error_response(404, "not_found_error", f"Not found: {request.url.path}")

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_fake/scripts", post_script, methods=["POST"]),
            Route("/_fake/scripts", get_scripts, methods=["GET"]),
            Route("/_fake/scripts", delete_scripts, methods=["DELETE"]),
            Route("/_fake/requests", get_requests, methods=["GET"]),
            Route("/_fake/requests", delete_requests, methods=["DELETE"]),
            Route(
                "/{path:path}",
                not_found,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
            ),
        ]
    )
    app.state.fake = state
    return app


def _has_credentials(request: Request) -> bool:
    if request.headers.get("x-api-key"):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _pending(script: _Script) -> int:
    return sum(int(r.get("times", 1)) for r in script.replies)


# --- Running it -------------------------------------------------------------------------------


class FakeAnthropicServer:
    """The fake on 127.0.0.1 and a free port, served by uvicorn in a background thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        zero_latency: bool = False,
        chunk_delay_ms: int = 0,
    ) -> None:
        self.host = host
        self.app = create_fake_app(zero_latency=zero_latency, chunk_delay_ms=chunk_delay_ms)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> FakeAnthropicServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake Anthropic server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> FakeAnthropicServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- Client for tests -------------------------------------------------------------------------


def _script_payload(match: str, replies: Sequence[FakeReply]) -> dict[str, Any]:
    return {"match": match, "replies": list(replies)}


def _checked(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()


class FakeAnthropicClient:
    """Scripts the fake over HTTP; works from any process. Sync, since the server never runs on
    the caller's event loop."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        with httpx.Client(base_url=self.base_url, timeout=self._timeout) as http:
            return _checked(http.request(method, path, **kwargs))

    def script(self, match: str, replies: Sequence[FakeReply]) -> int:
        """Queue replies for requests mentioning `match`; returns how many are pending."""
        result = self._call("POST", "/_fake/scripts", json=_script_payload(match, replies))
        return int(result["pending"])

    def requests(self, match: str | None = None) -> list[dict[str, Any]]:
        """Recorded Messages requests mentioning `match` (all when None), oldest first:
        each `{"path", "query", "headers", "status", "body"}`."""
        params = {"match": match} if match is not None else {}
        result: list[dict[str, Any]] = self._call("GET", "/_fake/requests", params=params)[
            "requests"
        ]
        return result

    def wait_requests(
        self, match: str | None, at_least: int, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """The recorded requests, once at least `at_least` mention `match`; raises
        TimeoutError if they have not arrived within `timeout` seconds."""
        params: dict[str, Any] = {"at_least": at_least, "wait_s": timeout}
        if match is not None:
            params["match"] = match
        with httpx.Client(base_url=self.base_url, timeout=timeout + self._timeout) as http:
            found: list[dict[str, Any]] = _checked(http.get("/_fake/requests", params=params))[
                "requests"
            ]
        if len(found) < at_least:
            raise TimeoutError(f"{len(found)} of {at_least} requests arrived in {timeout} s")
        return found

    def bodies(self, match: str | None = None) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests(match) if isinstance(r["body"], dict)]

    def reset(self, match: str | None = None) -> None:
        params = {"match": match} if match is not None else {}
        self._call("DELETE", "/_fake/scripts", params=params)


class AsyncFakeAnthropicClient:
    """The same as FakeAnthropicClient, for code already on an event loop."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout) as http:
            return _checked(await http.request(method, path, **kwargs))

    async def script(self, match: str, replies: Sequence[FakeReply]) -> int:
        result = await self._call("POST", "/_fake/scripts", json=_script_payload(match, replies))
        return int(result["pending"])

    async def requests(self, match: str | None = None) -> list[dict[str, Any]]:
        params = {"match": match} if match is not None else {}
        result = await self._call("GET", "/_fake/requests", params=params)
        found: list[dict[str, Any]] = result["requests"]
        return found

    async def bodies(self, match: str | None = None) -> list[dict[str, Any]]:
        return [r["body"] for r in await self.requests(match) if isinstance(r["body"], dict)]

    async def reset(self, match: str | None = None) -> None:
        params = {"match": match} if match is not None else {}
        await self._call("DELETE", "/_fake/scripts", params=params)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Anthropic Messages API for offline use.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--zero-latency", action="store_true", help="ignore all scripted delays")
    parser.add_argument("--chunk-delay-ms", type=int, default=0)
    args = parser.parse_args(argv)
    app = create_fake_app(zero_latency=args.zero_latency, chunk_delay_ms=args.chunk_delay_ms)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
