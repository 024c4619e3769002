"""The address policy the `http` tool and MCP servers share (activities/tools/network_guard.py):
every form of an internal or metadata address is judged as such, including IPv6 spellings that
embed an IPv4 address, and names are resolved for real."""

from __future__ import annotations

import ipaddress

import pytest

from activities.tools.network_guard import (
    AddressRefused,
    Verdict,
    check_address,
    checked_addresses,
    resolve,
    verdict,
)

PUBLIC = ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700::1111", "2a00:1450:4001::200e"]
PRIVATE = [
    *("10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1", "127.0.0.1", "127.1.2.3"),
    *("::1", "fc00::1", "fd12:3456::1", "100.64.0.1", "100.127.255.254", "0.0.0.0", "::"),
    *("::ffff:10.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::1", "64:ff9b::a00:1", "::7f00:1"),
    *("198.18.0.1", "192.0.2.1", "2001:db8::1"),
]
REFUSED = [
    *("169.254.169.254", "169.254.0.1", "169.254.170.2", "fe80::1", "fe80::a9fe:a9fe"),
    *("fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254", "::ffff:100.100.100.200"),
    *("2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe", "::a9fe:a9fe", "224.0.0.1", "ff02::1"),
    *("255.255.255.255", "240.0.0.1"),
]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        *((a, Verdict.PUBLIC) for a in PUBLIC),
        *((a, Verdict.PRIVATE) for a in PRIVATE),
        *((a, Verdict.REFUSED) for a in REFUSED),
    ],
)
def test_every_form_of_an_address_is_judged(address: str, expected: Verdict) -> None:
    assert verdict(ipaddress.ip_address(address)) == expected


def test_the_flag_opens_private_addresses_only() -> None:
    for address in PUBLIC:
        check_address(ipaddress.ip_address(address), "h", allow_private=False)
    for address in PRIVATE:
        with pytest.raises(AddressRefused, match="allow_private_networks"):
            check_address(ipaddress.ip_address(address), "h", allow_private=False)
        check_address(ipaddress.ip_address(address), "h", allow_private=True)
    for address in REFUSED:
        with pytest.raises(AddressRefused, match="never reachable"):
            check_address(ipaddress.ip_address(address), "h", allow_private=True)


async def test_names_are_resolved_and_every_address_checked() -> None:
    assert ipaddress.ip_address("127.0.0.1") in await resolve("localhost", 80)
    assert await resolve("[::1]", 80) == [ipaddress.ip_address("::1")]  # no lookup for literals
    with pytest.raises(AddressRefused, match="cannot be resolved"):
        await resolve("nothing.invalid", 80)
    with pytest.raises(AddressRefused, match="'localhost' resolves to"):
        await checked_addresses("localhost", 80, allow_private=False)
    assert await checked_addresses("localhost", 80, allow_private=True)
    with pytest.raises(AddressRefused, match="never reachable"):
        await checked_addresses("169.254.169.254", 80, allow_private=True)
