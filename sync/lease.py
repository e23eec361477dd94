"""One sync per connection at a time, across processes and hosts.

A run takes a lease on its connection row (owner ``host:pid``, until a time),
renews it with every page it commits and gives it back when it ends. A lease
that has expired, or whose owner is a dead process on this host, is taken over;
so a killed run never blocks the next one for long.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from sync.models import Connection

LEASE = timedelta(minutes=10)


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseHeldError(RuntimeError):
    pass


def acquire(session: Session, connection: str, owner: str, now: datetime) -> None:
    """Take the lease or raise ``LeaseHeldError`` naming its holder."""
    row = session.execute(
        sa.select(col(Connection.run_owner), col(Connection.run_lease_until)).where(col(Connection.id) == connection)
    ).one_or_none()
    if row is None:
        raise LookupError(f"connection {connection!r} is not in the ledger store")
    holder, until = row
    free = holder is None or holder == owner or until is None or until <= now or _dead_here(holder)
    if not free:
        raise LeaseHeldError(f"{connection}: another run ({holder}) holds this connection until {until:%H:%M:%S} UTC")
    result = session.execute(
        sa.update(Connection)
        .where(
            col(Connection.id) == connection,
            sa.or_(col(Connection.run_owner).is_(None), col(Connection.run_owner) == holder),
        )
        .values(run_owner=owner, run_lease_until=now + LEASE)
    )
    if getattr(result, "rowcount", 1) != 1:
        raise LeaseHeldError(f"{connection}: another run took this connection a moment ago")


def renew(session: Session, connection: str, owner: str, now: datetime) -> None:
    session.execute(
        sa.update(Connection)
        .where(col(Connection.id) == connection, col(Connection.run_owner) == owner)
        .values(run_lease_until=now + LEASE)
    )


def release(session: Session, connection: str, owner: str) -> None:
    session.execute(
        sa.update(Connection)
        .where(col(Connection.id) == connection, col(Connection.run_owner) == owner)
        .values(run_owner=None, run_lease_until=None)
    )
