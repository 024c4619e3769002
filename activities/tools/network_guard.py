"""Which network addresses a tool may connect to, shared by the `http` tool and MCP servers.

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
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from enum import IntEnum

from activities.tools import ToolRefused

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(network)
    for network in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class AddressRefused(ToolRefused):
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


def check_address(address: Address, host: str, allow_private: bool) -> None:
    """Raise AddressRefused unless a connection to `address` (which `host` named) is allowed."""
    judged = verdict(address)
    if judged == Verdict.REFUSED:
        raise AddressRefused(
            f"host '{host}' resolves to {address}, a link-local, metadata or non-unicast "
            "address; it is never reachable from tools"
        )
    if judged == Verdict.PRIVATE and not allow_private:
        raise AddressRefused(
            f"host '{host}' resolves to {address}, a private, loopback or otherwise internal "
            "address; set allow_private_networks to reach it"
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


async def checked_addresses(host: str, port: int, allow_private: bool) -> list[Address]:
    """The addresses of `host`, each one checked: any refused address refuses the host (a name
    that resolves to one public and one internal address is not trusted with either)."""
    addresses = await resolve(host, port)
    for address in addresses:
        check_address(address, host, allow_private)
    return addresses
