"""Which network addresses the platform may connect to: shared by the `http` tool and MCP
servers on the worker, and by webhook deliveries in the control plane (controlplane/webhooks/).

Why: tools run on the worker, next to its credentials. A URL the model (or a rendered MCP
config) names can point at the worker's own services, its private network or the cloud metadata
endpoint that hands out the machine's credentials. So a host name is resolved once, EVERY address
it resolves to is checked, and the caller connects to a checked address (never resolving the
name again, which a DNS rebinding answer could change in between).

Policy:
- Always refused: link-local (169.254.0.0/16, fe80::/10, where clouds serve metadata), the
  metadata addresses fd00:ec2::254 and 100.100.100.200, and multicast, broadcast or reserved
  addresses, even when private networks are allowed.
- Refused unless `allow_private_networks` is set: loopback, private (RFC 1918), unique-local
  (fc00::/7), carrier-grade NAT (100.64.0.0/10), unspecified (0.0.0.0 reaches the local host) and
  every other address that is not globally routable.
- IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) are
  judged by the embedded address too; the strictest verdict wins.

This module is a leaf: it imports nothing of the project (tests/test_architecture.py checks it),
so the control plane may use it without reaching into the worker side. Each caller turns
`AddressRefused` into its own kind of refusal and names its own switch for private networks
(`private_hint`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from enum import IntEnum

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(network)
    for network in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


# What a refusal of a private address tells the caller to do; the tools' switch by default.
TOOL_PRIVATE_HINT = "set allow_private_networks to reach it"


class AddressRefused(Exception):
    """A host whose addresses the guard will not connect to."""


class Verdict(IntEnum):
    PUBLIC = 0
    PRIVATE = 1
    REFUSED = 2


def _embedded(address: Address) -> list[Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in network for network in NAT64) or (
        address in IPV4_COMPATIBLE and int(address) > 1
    ):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _verdict_of(address: Address) -> Verdict:
    if any(address.version == net.version and address in net for net in ALWAYS_REFUSED):
        return Verdict.REFUSED
    if address.is_multicast or address.is_link_local:
        return Verdict.REFUSED
    if isinstance(address, ipaddress.IPv4Address):
        if address == ipaddress.IPv4Address("255.255.255.255") or address in ipaddress.ip_network(
            "240.0.0.0/4"
        ):
            return Verdict.REFUSED
        return Verdict.PUBLIC if address.is_global else Verdict.PRIVATE
    if address in GLOBAL_UNICAST_V6 and address.is_global:
        return Verdict.PUBLIC
    return Verdict.PRIVATE


def verdict(address: Address) -> Verdict:
    """How the policy treats one address (the strictest of it and any IPv4 it embeds)."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
    return max([_verdict_of(address), *(_verdict_of(inner) for inner in _embedded(address))])


def check_address(
    address: Address, host: str, allow_private: bool, private_hint: str = TOOL_PRIVATE_HINT
) -> None:
    """Raise AddressRefused unless a connection to `address` (which `host` named) is allowed."""
    judged = verdict(address)
    if judged == Verdict.REFUSED:
        raise AddressRefused(
            f"host '{host}' resolves to {address}, a link-local, metadata or non-unicast "
            "address; it is never reachable"
        )
    if judged == Verdict.PRIVATE and not allow_private:
        raise AddressRefused(
            f"host '{host}' resolves to {address}, a private, loopback or otherwise internal "
            f"address; {private_hint}"
        )


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (TCP), in the resolver's order, without duplicates. An
    IP literal is itself and no lookup is made."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as error:
        raise AddressRefused(f"host '{host}' cannot be resolved: {error}") from None
    addresses: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise AddressRefused(f"host '{host}' resolves to no address")
    return addresses


async def checked_addresses(
    host: str, port: int, allow_private: bool, private_hint: str = TOOL_PRIVATE_HINT
) -> list[Address]:
    """The addresses of `host`, each one checked: any refused address refuses the host (a name
    that resolves to one public and one internal address is not trusted with either)."""
    addresses = await resolve(host, port)
    for address in addresses:
        check_address(address, host, allow_private, private_hint)
    return addresses


def default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def pinned_request(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    address: Address,
    headers: Mapping[str, str],
    content: bytes | None,
) -> httpx.Request:
    """A request for `url` that connects to `address` and no other: the URL carries the IP,
    the Host header and the TLS server name (`sni_hostname`, which certificates are verified
    against) carry the name. A Host header given by the caller is replaced."""
    sent = {k: v for k, v in headers.items() if k.lower() != "host"}
    sent["Host"] = url.netloc.decode("ascii")
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(
        method,
        url.copy_with(host=str(address)),
        headers=sent,
        content=content,
        extensions=extensions,
    )


async def send_pinned(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    headers: Mapping[str, str],
    content: bytes | None,
    *,
    allow_private: bool,
    private_hint: str = TOOL_PRIVATE_HINT,
) -> httpx.Response:
    """Resolve the URL's host once, check every address, and send to the checked addresses in
    order until one connects (streamed: the caller reads and closes the response). Raises
    AddressRefused or httpx errors."""
    port = url.port or default_port(url)
    addresses = await checked_addresses(url.host, port, allow_private, private_hint)
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request = pinned_request(client, method, url, address, headers, content)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as error:
            failure = error
    assert failure is not None
    raise failure
