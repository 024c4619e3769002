"""The control plane's connection to Temporal: one connection, one client per organization's
namespace.

Every organization's workflows live in a namespace of their own (Settings.namespace_for), which
the gateway registers the first time it is needed (and at start-up for every organization), so
no organization's workflows, inputs or task queues are visible in another's namespace. The
connection is made lazily, so the API starts (and says "not ready") while Temporal is down.

With a signing key the connection carries a short-lived JWT (`system:admin`, see
controlplane/temporal_auth.py) for Temporal's authorizer, renewed well before it expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    RegisterNamespaceRequest,
)
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from controlplane.errors import Unavailable
from controlplane.settings import Settings
from controlplane.temporal_auth import Token

log = logging.getLogger("controlplane.api.temporal")
NAMESPACE_READY_TIMEOUT = 15.0


class NamespaceWarmup(Interceptor):
    """A namespace answers DescribeNamespace at once after it is registered, but its first
    workflow start can still be refused ("Namespace ... is not found") for some tens of
    milliseconds, until every service has it. Starting a workflow in a namespace this gateway
    registered retries that refusal for a few seconds."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _RetryUnknownNamespace(next)


class _RetryUnknownNamespace(OutboundInterceptor):
    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        deadline = asyncio.get_running_loop().time() + NAMESPACE_READY_TIMEOUT
        while True:
            try:
                return await super().start_workflow(input)
            except RPCError as error:
                unknown = error.status == RPCStatusCode.NOT_FOUND and "amespace" in error.message
                if not unknown or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.02)


def tls_config(settings: Settings) -> TLSConfig | bool:
    """What temporalio takes as `tls=`: off, or the configured CA and server name."""
    if not settings.temporal_tls:
        return False
    ca = Path(settings.temporal_tls_ca_file).read_bytes() if settings.temporal_tls_ca_file else None
    return TLSConfig(server_root_ca_cert=ca, domain=settings.temporal_tls_server_name)


class TemporalGateway:
    def __init__(
        self, settings: Settings, count_error: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        self.address = settings.temporal_address
        # Told the operation of each call Temporal failed (the API counts them in a metric).
        self.count_error = count_error or (lambda operation: None)
        self._base: Client | None = None
        self._clients: dict[str, Client] = {}
        self._lock = asyncio.Lock()
        # Set at start-up once the signing key is loaded; None: no token (dev, tests).
        self.token_source: Callable[[], Token] | None = None
        self._token: Token | None = None
        # Told (organization id, namespace) once a namespace is known to exist, so start-up
        # does not ask Temporal again for every organization.
        self.namespace_ready: Callable[[str, str], Awaitable[None]] | None = None

    async def client(self, organization_id: str) -> Client:
        """A client bound to the organization's namespace (registered if it is new)."""
        namespace = self.settings.namespace_for(organization_id)
        found = self._clients.get(namespace)
        if found is not None:
            self._renew_token()
            return found
        base = await self.system_client()
        async with self._lock:
            if namespace not in self._clients:
                await self._ensure_namespace(base, namespace)
                self._clients[namespace] = Client(
                    base.service_client, namespace=namespace, interceptors=[NamespaceWarmup()]
                )
                if self.namespace_ready is not None:
                    await self.namespace_ready(organization_id, namespace)
        return self._clients[namespace]

    async def system_client(self) -> Client:
        """The client of the control plane's own namespace."""
        if self._base is not None:
            self._renew_token()
            return self._base
        async with self._lock:
            if self._base is None:
                try:
                    self._token = self.token_source() if self.token_source else None
                    self._base = await asyncio.wait_for(
                        Client.connect(
                            self.address,
                            namespace=self.settings.temporal_namespace,
                            api_key=self._token.token if self._token else None,
                            tls=tls_config(self.settings),
                        ),
                        timeout=5,
                    )
                    await self._ensure_namespace(self._base, self.settings.temporal_namespace)
                except Unavailable:
                    self._base = None
                    raise
                except Exception as exc:
                    self.count_error("connect")
                    raise Unavailable(f"Temporal at {self.address} is unreachable: {exc}") from exc
        return self._base

    def _renew_token(self) -> None:
        """A fresh JWT once a third of the current one's life is left."""
        if self._token is None or self.token_source is None or self._base is None:
            return
        left = self._token.expires_at - datetime.now(UTC)
        if left > timedelta(seconds=self.settings.temporal_token_ttl_seconds / 3):
            return
        self._token = self.token_source()
        self._base.api_key = self._token.token

    async def _ensure_namespace(self, client: Client, namespace: str) -> None:
        """Register the namespace; one that exists already is fine. Registering first, rather
        than asking whether it exists, keeps Temporal from caching a "not found" for it."""
        service = client.workflow_service
        retention = Duration(seconds=self.settings.temporal_retention_days * 86400)
        deadline = asyncio.get_running_loop().time() + NAMESPACE_READY_TIMEOUT
        pause = 0.1
        while True:
            try:
                await service.register_namespace(
                    RegisterNamespaceRequest(
                        namespace=namespace,
                        workflow_execution_retention_period=retention,
                        description="controlplane namespace",
                    )
                )
                log.info("registered Temporal namespace", extra={"namespace": namespace})
                break
            except RPCError as error:
                if error.status == RPCStatusCode.ALREADY_EXISTS:
                    return
                # Temporal rate-limits namespace registration: wait and try again.
                busy = error.status == RPCStatusCode.RESOURCE_EXHAUSTED
                if not busy or asyncio.get_running_loop().time() > deadline:
                    self.count_error("register_namespace")
                    raise Unavailable(
                        f"Could not register Temporal namespace {namespace}: {error.message}"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        # A new namespace is usable a moment after it is registered.
        deadline = asyncio.get_running_loop().time() + NAMESPACE_READY_TIMEOUT
        while True:
            try:
                await service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
                return
            except RPCError:
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(f"Temporal namespace {namespace} is not ready") from None
                await asyncio.sleep(0.05)

    async def ensure_namespaces(self, organization_ids: list[str]) -> None:
        """Every listed organization's namespace exists (start-up: existing organizations)."""
        for organization_id in organization_ids:
            await self.client(organization_id)

    async def healthy(self) -> bool:
        try:
            client = await self.system_client()
            return await asyncio.wait_for(client.service_client.check_health(), timeout=2)
        except Exception:
            self.count_error("health")
            return False
