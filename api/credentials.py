"""What an API process remembers about the keys and worker tokens it has seen: who they
belong to and their rate limit, for a few seconds (`Settings.auth_cache_seconds`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from api.principal import Principal

# Entries beyond this many are dropped oldest first; a busy process sees far fewer credentials.
MAX_CACHED_CREDENTIALS = 10_000


@dataclass(frozen=True)
class Credential:
    """What a key or worker token stands for, and its rate limit."""

    principal: Principal
    counter: uuid.UUID  # whose requests are counted: the API key's or the worker's id
    limit: int  # requests per minute
    loaded_at: float  # time.monotonic() when read from the database


class CredentialCache:
    """Credentials by the hash of their secret, each for at most `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, Credential] = {}

    def get(self, token_hash: str, now: float) -> Credential | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if now - entry.loaded_at >= self.ttl:
            del self._entries[token_hash]
            return None
        return entry

    def put(self, token_hash: str, credential: Credential) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= MAX_CACHED_CREDENTIALS:
            del self._entries[next(iter(self._entries))]
        self._entries[token_hash] = credential

    def forget(self, matches: Callable[[Principal], bool]) -> None:
        """Drop the entries whose principal `matches`: a revoked key, a disconnected worker."""
        gone = [h for h, entry in self._entries.items() if matches(entry.principal)]
        for token_hash in gone:
            del self._entries[token_hash]
