"""What every OAuth2 authorization-code flow shares: reading the redirect the user pastes back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

from connectors.base import Actor, Clock, FatalError, OAuthTokens, ReauthRequiredError, TokenStore


def read_redirect(answer: str, expected_state: str | None) -> tuple[str, dict[str, list[str]]]:
    """The authorization code and the redirect's query, from a pasted redirect URL or a bare code.

    A redirect carrying ``error`` or another authorization's ``state`` is
    refused with a message for the user. (A pasted redirect without ``state``
    is accepted: the person pasting it is the one who authorised.)
    """
    text = answer.strip()
    if "://" not in text and not text.startswith("?"):
        return text, {}
    query = parse_qs(urlparse(text).query)
    if "error" in query:
        raise FatalError(f"authorization refused: {query['error'][0]}", actor=Actor.CONFIG)
    if expected_state is not None and "state" in query and query["state"][0] != expected_state:
        raise FatalError("the redirect URL's state does not match this authorization: start again", actor=Actor.CONFIG)
    if "code" not in query:
        raise FatalError("the redirect URL carries no authorization code", actor=Actor.CONFIG)
    return query["code"][0], query


class BearerTokens:
    """A connection's current access token, refreshed through its ``TokenStore``.

    ``authorization()`` gives the ``Authorization`` header, refreshing first
    when the token is about to expire; ``refresh()`` is what the transport
    calls after a 401. Both go through ``TokenStore.refresh_locked``, so two
    runs never spend the same refresh token; ``invalid_grant`` marks the
    connection for re-authorisation.
    """

    def __init__(
        self,
        connection: str,
        store: TokenStore,
        refresh: Callable[[OAuthTokens], OAuthTokens],
        clock: Clock,
        skew: timedelta = timedelta(seconds=120),
    ) -> None:
        self.connection = connection
        self.store = store
        self._refresh_with = refresh
        self.clock = clock
        self.skew = skew
        self._lock = threading.Lock()
        self._current: OAuthTokens | None = None

    def load(self) -> OAuthTokens:
        tokens = self.store.load()
        if tokens is None:
            raise ReauthRequiredError(f"{self.connection}: not connected yet: run `arsync connect {self.connection}`")
        return tokens

    def _refresh_from(self, stale: OAuthTokens) -> OAuthTokens:
        try:
            fresh = self.store.refresh_locked(stale, self._refresh_with)
        except ReauthRequiredError as exc:
            self.store.mark_needs_reauth(str(exc))
            raise
        self._current = fresh
        return fresh

    def authorization(self) -> str:
        with self._lock:
            current = self._current or self.load()
            self._current = current
            if current.access_expires_at - self.skew <= self.clock():
                current = self._refresh_from(current)
            return f"Bearer {current.access_token}"

    def refresh(self) -> None:
        with self._lock:
            self._refresh_from(self._current or self.load())
