"""Why a use case refused, in the domain's words. The HTTP facade maps each kind to a status and
an error code (api/errors.py); the domain knows nothing of HTTP."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal the caller should see. `code` overrides the kind's default error code."""

    def __init__(
        self, message: str, *, details: dict[str, Any] | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.code = code


class Unauthenticated(DomainError):
    """The request does not prove who sent it (a webhook's signature is missing or wrong)."""


class NotFound(DomainError):
    """No such thing in the caller's organization (another tenant's id looks the same)."""


class Conflict(DomainError):
    """The request contradicts the current state: a duplicate name, a status that forbids it."""


class Refused(DomainError):
    """The request is well formed but cannot be carried out as asked."""


class Invalid(DomainError):
    """Part of the request (or a stored configuration it relies on) is not valid."""


class Forbidden(DomainError):
    """The caller may not do this."""


class RateLimited(DomainError):
    def __init__(
        self, message: str, *, retry_after: int, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """Something the use case needs (Temporal, the vault key, the model) is not there now."""


class UpstreamFailed(DomainError):
    """A service the use case called (the model) answered, but not usably."""


class TimedOut(DomainError):
    """The use case did not finish in the time it was given; it may still finish later."""


class Broken(DomainError):
    """The control plane's own state is inconsistent (e.g. a secret sealed with another key)."""


def not_found(kind: str, ident: object) -> NotFound:
    # Another tenant's id answers exactly like a missing one.
    return NotFound(f"{kind} '{ident}' not found")
