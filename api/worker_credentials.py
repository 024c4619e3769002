"""Credentials the control plane hands to workers: worker keys (to start on a queue), worker
tokens (the worker protocol) and the short-lived JWTs Temporal's authorizer checks. Minting is
rate limited per organization, so a leaked admin or worker key cannot mint without bound."""

from __future__ import annotations

from api.errors import ApiError
from api.routing import Call
from controlplane.tenancy import take_mint_budget


async def require_mint_budget(call: Call) -> None:
    """429 once the organization has minted its worker keys and tokens for this minute."""
    per_minute = call.state.settings.credential_mint_limit_per_minute
    wait = await take_mint_budget(call.db, call.org, per_minute)
    if wait is not None:
        raise ApiError(
            429,
            f"Worker credentials are minted at most {per_minute} per minute per organization",
            details={"limit": per_minute, "retry_after_seconds": wait},
            headers={"Retry-After": str(wait)},
        )
