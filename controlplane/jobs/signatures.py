"""Inbound webhook signatures: `X-Webhook-Signature: sha256=<hex>` or GitHub's
`X-Hub-Signature-256: sha256=<hex>`, the hex HMAC-SHA256 of the raw request body keyed with the
job's secret (its UTF-8 bytes, as GitHub keys it). Compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

HEADERS = ("x-webhook-signature", "x-hub-signature-256")
SCHEME = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value a sender puts on `body`."""
    return SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verified(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether one of the signature headers signs `body` with `secret`."""
    expected = sign(secret, body).encode()
    for name in HEADERS:
        given = headers.get(name)
        # Compared as bytes: compare_digest refuses str with non-ASCII characters.
        if given is not None and hmac.compare_digest(given.strip().lower().encode(), expected):
            return True
    return False
