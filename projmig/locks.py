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
from .errors import PreflightError, ProjmigError
from .settings import DatabaseSettings

LOCK_SPACE = 0x706D6967  # "pmig"
KEEPALIVES = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}
LOCK_NOT_AVAILABLE = "55P03"


class MigrationBusy(ProjmigError):
    """Another run holds the lock of a project this run needs; nothing was written."""


class ProjectLocks:
    """The advisory locks of one run, on one connection of its own (see the module), opened when the
    first projects are locked."""

    def __init__(self, db: DatabaseSettings, wait: float):
        self.db = db
        self.wait = wait
        self.engine = create_engine(db, pool_size=1, role="destination")
        self.conn: AsyncConnection | None = None
        self.held: set[str] = set()

    async def acquire(self, uuids: Iterable[str]) -> None:
        """Lock these destination projects (those not held yet), waiting at most ``wait`` seconds
        in all; raises :class:`MigrationBusy` naming the first project another run holds. Called by
        the preflight: a database failure is a :class:`PreflightError` (nothing written yet)."""
        wanted = sorted({u.lower() for u in uuids} - self.held)
        if not wanted:
            return
        try:
            conn = await self._connection()
            if await self._try(conn, wanted):
                return
            deadline = time.monotonic() + self.wait
            for uuid in wanted:  # one at a time, in one order: two waiting runs cannot deadlock
                await self._wait_for(conn, uuid, deadline)
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise PreflightError(
                f"destination database {self.db.describe()}: connection lost while locking the projects "
                f"({_first_line(exc)}); nothing was written"
            ) from None

    async def confirm(self) -> None:
        """Just before the insert: the locks are still held. Their connection lost (and so the locks,
        which PostgreSQL released with it), they are taken again if no other run took them meanwhile;
        else :class:`MigrationBusy`. A database failure is a :class:`LockLost` (nothing inserted)."""
        if not self.held:
            return
        try:
            if self.conn is not None and not self.conn.invalidated:
                try:
                    await self.conn.execute(text("SELECT 1"))
                    return
                except (DBAPIError, OSError, TimeoutError):
                    pass  # the connection went, and the locks with it
            projects, self.held = sorted(self.held), set()
            self.conn = None
            if not await self._try(await self._connection(), projects):
                raise MigrationBusy(
                    f"the lock of {', '.join(projects)} went with its lost database connection and another run holds "
                    "it now: nothing was inserted; rerun when it has finished"
                )
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise LockLost(
                f"destination database {self.db.describe()}: connection holding the projects' lock lost "
                f"({_first_line(exc)}); nothing was inserted; rerun to continue"
            ) from None

    async def close(self) -> None:
        """Release every lock (by closing their connection; a connection already gone released them)."""
        try:
            if self.conn is not None:
                await self.conn.invalidate()  # closed, not returned to a pool with its locks
        except Exception:  # already gone: so are its locks
            pass
        await self.engine.dispose()

    async def _connection(self) -> AsyncConnection:
        if self.conn is None:
            conn = await self.engine.connect()
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction held open
            for name, value in KEEPALIVES.items():
                await conn.execute(text(f"SET {name} = {value}"))
            self.conn = conn
        return self.conn

    async def _try(self, conn: AsyncConnection, wanted: list[str]) -> bool:
        """Take all of ``wanted`` at once, or none (what was taken is given back)."""
        got = dict((await conn.execute(
            text("SELECT u, pg_try_advisory_lock(:space, hashtext(u)) FROM unnest(CAST(:u AS text[])) AS u"),
            {"space": LOCK_SPACE, "u": wanted},
        )).all())
        if all(got.values()):
            self.held.update(wanted)
            return True
        for uuid in (u for u, ok in got.items() if ok):
            await conn.execute(text("SELECT pg_advisory_unlock(:space, hashtext(:u))"), {"space": LOCK_SPACE, "u": uuid})
        return False

    async def _wait_for(self, conn: AsyncConnection, uuid: str, deadline: float) -> None:
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        await conn.execute(text(f"SET lock_timeout = {left_ms}"))
        try:
            await conn.execute(text("SELECT pg_advisory_lock(:space, hashtext(:u))"), {"space": LOCK_SPACE, "u": uuid})
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            raise MigrationBusy(
                f"another migration of {uuid} is running (or its rollback; waited {self.wait:g} s for it to end, "
                "options.lock_wait): nothing was written; rerun when it has finished"
            ) from None
        finally:
            if not conn.invalidated:
                await conn.execute(text("SET lock_timeout = 0"))
        self.held.add(uuid)


class LockLost(ProjmigError):
    """The connection holding a run's locks was lost and could not be opened again."""


def _first_line(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return (str(cause).splitlines() or [type(cause).__name__])[0]


@asynccontextmanager
async def project_locks(db: DatabaseSettings, wait: float) -> AsyncIterator[ProjectLocks]:
    """A run's locks; when the block ends, their connection is closed and the locks are released."""
    locks = ProjectLocks(db, wait)
    try:
        yield locks
    finally:
        await locks.close()
