"""The `http` tool (`http_request`): one HTTP request to an allow-listed host.

The URL is parsed once by httpx and that parsed URL is what is both checked and requested, so
parser tricks (`http://allowed@evil/`, odd escapes) cannot make the check and the connection
disagree. A host passes when it equals an `allowed_hosts` entry or is a subdomain of it
(`example.com` allows `api.example.com`; `*.example.com` allows only subdomains); an entry may
pin a port (`localhost:8080`). IP literals pass only when listed exactly.

Then the address: an allowed name may still resolve to the worker's own network or to the
cloud metadata service, and resolve differently a moment later (DNS rebinding). So the host is
resolved once, every address is checked by activities/tools/network_guard.py (internal addresses
only with `allow_private_networks: true`; link-local and metadata never), and the request is sent
to that checked IP itself: the URL's host is replaced by the address, while the Host header and
the TLS server name (SNI, and so certificate verification) stay the name. Redirects are followed
by hand, each hop's URL and addresses checked again (at most 5). The worker's proxy settings and
.netrc are not used. Methods, timeout and response size are capped by the configuration.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from activities.tools import TRUNCATED, Config, ToolRefused, ToolResult, argument
from activities.tools.network_guard import AddressRefused, default_port, send_pinned

DEFAULT_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
DEFAULT_TIMEOUT = 15
DEFAULT_MAX_RESPONSE = 262144
MAX_REDIRECTS = 5
SHOWN_HEADERS = ("content-type", "content-length", "location")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _split_pattern(pattern: str) -> tuple[str, int | None]:
    pattern = pattern.strip().lower()
    if "://" in pattern:  # a URL given as the host: keep its host and port
        url = httpx.URL(pattern)
        return url.host.rstrip("."), url.port
    if pattern.startswith("["):  # [v6]:port
        host, _, port = pattern[1:].partition("]")
        return host, int(port[1:]) if port.startswith(":") and port[1:].isdigit() else None
    host, sep, port = pattern.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        return host.rstrip("."), int(port)
    return pattern.rstrip("."), None


def host_allowed(url: httpx.URL, patterns: list[str]) -> bool:
    host = url.host.lower().rstrip(".")
    if not host:
        return False
    port = url.port
    address = _ip(host)
    for pattern in patterns:
        allowed_host, allowed_port = _split_pattern(pattern)
        if allowed_port is not None and allowed_port != (port or default_port(url)):
            continue
        if address is not None:
            allowed_address = _ip(allowed_host)
            if allowed_address is not None and allowed_address == address:
                return True
            continue
        if allowed_host.startswith("*."):
            if host.endswith(allowed_host[1:]):
                return True
        elif (
            allowed_host
            and _ip(allowed_host) is None
            and (host == allowed_host or host.endswith("." + allowed_host))
        ):
            return True
    return False


def checked_url(raw: str | httpx.URL, patterns: list[str]) -> httpx.URL:
    try:
        url = raw if isinstance(raw, httpx.URL) else httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError) as error:
        raise ToolRefused(f"invalid URL: {error}") from None
    if url.scheme not in ("http", "https"):
        raise ToolRefused(f"scheme '{url.scheme}' is not allowed (http or https only)")
    if not patterns:
        raise ToolRefused("no hosts are allowed for this skill (allowed_hosts is empty)")
    if not host_allowed(url, patterns):
        raise ToolRefused(f"host '{url.host}' is not in allowed_hosts")
    return url


def _body(arguments: Mapping[str, Any]) -> tuple[bytes | None, str | None]:
    body = arguments.get("body")
    if body is None:
        return None, None
    if isinstance(body, str):
        return body.encode(), None
    return json.dumps(body).encode(), "application/json"


def _headers(arguments: Mapping[str, Any]) -> dict[str, str]:
    headers = arguments.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in headers.items()
    ):
        raise ToolRefused("headers must be an object of strings")
    return {k: str(v) for k, v in headers.items()}


async def run(
    name: str,
    arguments: Mapping[str, Any],
    config: Config,
    *,
    workspace: Path,
    env: Mapping[str, str],
) -> ToolResult:
    patterns = config.strings("allowed_hosts", [])
    methods = {m.upper() for m in config.strings("allowed_methods", DEFAULT_METHODS)}
    timeout = config.number("timeout", DEFAULT_TIMEOUT, minimum=0.1)
    max_bytes = config.integer("max_response_bytes", DEFAULT_MAX_RESPONSE, minimum=1)
    allow_private = config.flag("allow_private_networks", False)
    method = argument(arguments, "method", "GET").upper()
    if method not in methods:
        raise ToolRefused(f"method {method} is not allowed")
    url = checked_url(argument(arguments, "url"), patterns)
    headers = _headers(arguments)
    content, content_type = _body(arguments)
    if content_type and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = content_type
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False
    ) as client:
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with asyncio.timeout(timeout):  # resolving counts against the timeout
                    try:
                        response = await send_pinned(
                            client, method, url, headers, content, allow_private=allow_private
                        )
                    except AddressRefused as refused:  # a refusal the model reads
                        raise ToolRefused(str(refused)) from None
                try:
                    if not response.is_redirect:
                        return await _result(method, url, response, max_bytes)
                finally:
                    await response.aclose()
                try:
                    next_url = url.join(response.headers["location"])
                except httpx.InvalidURL as error:
                    return ToolResult(f"redirect to an invalid URL: {error}", True)
                target = checked_url(next_url, patterns)
                if target.host != url.host:
                    headers = {
                        k: v for k, v in headers.items() if k.lower() not in ("authorization",)
                    }
                if response.status_code == 303 or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    method, content = "GET", None
                    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
                url = target
        except (httpx.TimeoutException, TimeoutError):
            return ToolResult(f"{method} {url} timed out after {timeout:g}s", True)
        except httpx.HTTPError as error:
            return ToolResult(f"{method} {url} failed: {error}", True)
    return ToolResult(f"too many redirects (more than {MAX_REDIRECTS})", True)


async def _result(
    method: str, url: httpx.URL, response: httpx.Response, max_bytes: int
) -> ToolResult:
    body = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        room = max_bytes - len(body)
        if len(chunk) > room:
            body.extend(chunk[:room])
            truncated = True
            break
        body.extend(chunk)
    lines = [f"HTTP {response.status_code} {response.reason_phrase}"]
    lines += [f"{h}: {response.headers[h]}" for h in SHOWN_HEADERS if h in response.headers]
    try:
        decoded = body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        decoded = body.decode("utf-8", errors="replace")
    text = "\n".join(lines) + "\n\n" + decoded
    if truncated:
        text += f"\n{TRUNCATED} response larger than {max_bytes} bytes"
    return ToolResult(text, is_error=response.status_code >= 400)
