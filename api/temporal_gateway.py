"""The API's one Temporal client, connected lazily so the API starts (and says "not ready")
while Temporal is still down."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from api.errors import ApiError
from api.metrics import Metrics


class TemporalGateway:
    def __init__(self, address: str, namespace: str, metrics: Metrics) -> None:
        self.address = address
        self.namespace = namespace
        self._metrics = metrics
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        Client.connect(self.address, namespace=self.namespace), timeout=5
                    )
                except Exception as exc:
                    self._metrics.temporal_errors.labels(operation="connect").inc()
                    raise ApiError(
                        503, f"Temporal at {self.address} is unreachable: {exc}"
                    ) from exc
        return self._client

    async def healthy(self) -> bool:
        try:
            client = await self.client()
            return await asyncio.wait_for(client.service_client.check_health(), timeout=2)
        except Exception:
            self._metrics.temporal_errors.labels(operation="health").inc()
            return False
