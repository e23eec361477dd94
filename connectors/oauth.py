"""What every OAuth2 authorization-code flow shares: reading the redirect the user pastes back."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from connectors.base import Actor, FatalError


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
