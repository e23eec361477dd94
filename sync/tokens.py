"""OAuth tokens kept on the connection row, refreshed under a database lock.

The lock is a write to the connection row (``token_generation + 1``) at the
start of the refresh transaction: a row lock on PostgreSQL, the database
write lock on SQLite. A second process blocks there, then re-reads and sees
that the tokens it held are stale, so it never spends the same refresh token
twice. The new pair is committed before the caller may use it.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from connectors.base import OAuthTokens
from sync.models import Connection


class DatabaseTokenStore:
    def __init__(self, sessions: sessionmaker[Session], connection_id: str) -> None:
        self._sessions = sessions
        self._connection_id = connection_id

    def _row(self, session: Session) -> Connection:
        row = session.get(Connection, self._connection_id)
        if row is None:
            raise LookupError(f"connection {self._connection_id!r} is not in the ledger store")
        return row

    @staticmethod
    def _tokens(row: Connection) -> OAuthTokens | None:
        if not row.access_token or not row.refresh_token or row.access_expires_at is None:
            return None
        return OAuthTokens(
            access_token=row.access_token,
            refresh_token=row.refresh_token,
            access_expires_at=row.access_expires_at,
            refresh_expires_at=row.refresh_expires_at,
            account_id=row.account_id,
        )

    @staticmethod
    def _write(row: Connection, tokens: OAuthTokens) -> None:
        row.access_token = tokens.access_token
        row.refresh_token = tokens.refresh_token
        row.access_expires_at = tokens.access_expires_at
        row.refresh_expires_at = tokens.refresh_expires_at
        if tokens.account_id:
            row.account_id = tokens.account_id
        row.status = "ok"
        row.status_reason = None

    def load(self) -> OAuthTokens | None:
        with self._sessions() as session:
            return self._tokens(self._row(session))

    def save(self, tokens: OAuthTokens) -> None:
        with self._sessions.begin() as session:
            self._write(self._row(session), tokens)

    def refresh_locked(self, stale: OAuthTokens | None, refresh: Callable[[OAuthTokens], OAuthTokens]) -> OAuthTokens:
        with self._sessions.begin() as session:
            session.execute(
                sa.update(Connection)
                .where(col(Connection.id) == self._connection_id)
                .values(token_generation=col(Connection.token_generation) + 1)
            )
            row = self._row(session)
            session.refresh(row)
            current = self._tokens(row)
            if current is None:
                raise LookupError(f"connection {self._connection_id!r} has no tokens: run `arsync connect`")
            if stale is None or current.access_token != stale.access_token:
                return current
            fresh = refresh(current)
            self._write(row, fresh)
        return fresh

    def mark_needs_reauth(self, reason: str) -> None:
        with self._sessions.begin() as session:
            row = self._row(session)
            row.status = "needs_reauth"
            row.status_reason = reason
