"""One migration (or rollback) of a destination project at a time.

A run holds a session-level PostgreSQL advisory lock per destination project
(``pg_advisory_lock(LOCK_SPACE, hashtext(<project uuid>))``) on one connection to the destination
database that the run's process keeps open: taken in the preflight, once the projects are known and
before anything is written (the write probe, an object, an upload), and held until the insert (or
the rollback) has ended. A second run of any of the same projects waits up to
``options.lock_wait`` seconds for it, then fails with one line, ``another migration of <uuid> is
running``, having written nothing. A run that waited finds the projects the other one inserted
already migrated, and leaves them as they are.

The lock lives as long as its connection: a killed process's locks go when PostgreSQL sees the
connection end (at once for a closed socket; within about a minute through the TCP keepalives set
here when the network went away). Session-level locks need a session of their own: a pooler between
projmig and PostgreSQL must be in session mode (PgBouncer's transaction mode would hand the lock to
others' transactions).

The two-key space (``LOCK_SPACE``, ...) is apart from the one-key locks each insert transaction
takes (``pg_advisory_xact_lock(hashtext(uuid))``), so a run's own insert, on another connection,
never waits for the run's own lock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import create_engine
from .errors import ProjmigError
from .settings import DatabaseSettings

LOCK_SPACE = 0x706D6967  # "pmig"
KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}
LOCK_NOT_AVAILABLE = "55P03"


class MigrationBusy(ProjmigError):
    """Another run holds the lock of a project this run needs; nothing was written."""


class ProjectLocks:
    """The advisory locks of one run, on one connection of its own (see the module)."""

    def __init__(self, conn: AsyncConnection, wait: float, what: str = "migration"):
        self.conn = conn
        self.wait = wait
        self.what = what
        self.held: set[str] = set()

    async def acquire(self, uuids: Iterable[str]) -> None:
        """Lock these destination projects (those not held yet), waiting at most ``wait`` seconds
        in all; raises :class:`MigrationBusy` naming the first project another run holds."""
        wanted = sorted({u.lower() for u in uuids} - self.held)
        if not wanted:
            return
        got = dict((await self.conn.execute(
            text("SELECT u, pg_try_advisory_lock(:space, hashtext(u)) FROM unnest(CAST(:u AS text[])) AS u"),
            {"space": LOCK_SPACE, "u": wanted},
        )).all())
        if all(got.values()):
            self.held.update(wanted)
            return
        # another run holds some: give back what was taken, then wait for each in one order (two
        # runs waiting for each other's projects would deadlock otherwise)
        for uuid in (u for u, ok in got.items() if ok):
            await self.conn.execute(text("SELECT pg_advisory_unlock(:space, hashtext(:u))"), {"space": LOCK_SPACE, "u": uuid})
        deadline = time.monotonic() + self.wait
        for uuid in wanted:
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            await self.conn.execute(text(f"SET lock_timeout = {left_ms}"))
            try:
                await self.conn.execute(text("SELECT pg_advisory_lock(:space, hashtext(:u))"), {"space": LOCK_SPACE, "u": uuid})
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                raise MigrationBusy(
                    f"another {self.what} of {uuid} is running (waited {self.wait:g} s for it to end, "
                    "options.lock_wait): nothing was written; rerun when it has finished"
                ) from None
            finally:
                if not self.conn.invalidated:
                    await self.conn.execute(text("SET lock_timeout = 0"))
            self.held.add(uuid)


@asynccontextmanager
async def project_locks(db: DatabaseSettings, wait: float, what: str = "migration") -> AsyncIterator[ProjectLocks]:
    """A connection of its own for a run's locks; closing it releases them all."""
    engine = create_engine(db, pool_size=1, role="destination")
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction held open
            for name, value in KEEPALIVES.items():
                await conn.execute(text(f"SET {name} = {value}"))
            yield ProjectLocks(conn, wait, what)
    finally:
        await engine.dispose()
