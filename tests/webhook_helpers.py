"""A real HTTP receiver for webhook tests (uvicorn on a free loopback port, on the test's event
loop), and the Standard Webhooks verification written out from the specification, independent
of the project's signing code."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from controlplane.services import free_port

# A public address for a subscription nothing is delivered to: no lookup, no receiver.
PUBLIC_URL = "https://93.184.216.34/hooks/cp"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (200 once the script is used up); a
    request whose turn is in `hold` waits until `release` is set. Tests wait for requests with
    `wait_for`, never by sleeping."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    hold: set[int] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        turn = len(self.received)
        async with self.arrived:
            self.received.append(Received(headers, b"".join(chunks)))
            self.arrived.notify_all()
        if turn in self.hold:
            await self.release.wait()
        status = self.script[turn] if turn < len(self.script) else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": f"answer {turn}: {status}".encode()})

    async def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.received) >= count), timeout
            )
        return list(self.received)


@asynccontextmanager
async def receiving(**options: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(**options)
    port = free_port()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    server = uvicorn.Server(
        uvicorn.Config(
            receiver,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the receiver did not start"
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.should_exit = True
        await task


def verified(secret: str, received: Received) -> bool:
    """The Standard Webhooks check, as a receiver writes it: the key is the base64 after
    `whsec_`; the signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the header holds
    space-separated `v1,<base64 HMAC-SHA256>` signatures, one of which must match."""
    key = base64.b64decode(secret[len("whsec_") :])
    content = (
        received.headers["webhook-id"].encode()
        + b"."
        + received.headers["webhook-timestamp"].encode()
        + b"."
        + received.body
    )
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(signature, f"v1,{expected}")
        for signature in received.headers["webhook-signature"].split(" ")
    )
