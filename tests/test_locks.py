"""The project locks on a real PostgreSQL server: one holder per project, a bounded wait that names
the project another run holds and leaves nothing locked, and release with the connection."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from projmig.locks import LOCK_SPACE, MigrationBusy, project_locks
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import Simcore

A, B, C = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002", "cccccccc-0000-4000-8000-000000000003"


async def held_by_others(simcore: Simcore) -> int:
    """Advisory locks of projmig's space granted to any session (seen from a connection of the test's own)."""
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objsubid = 2 AND granted",
            LOCK_SPACE)
    finally:
        await conn.close()


async def test_a_project_is_held_by_one_run_and_the_other_waits_a_bounded_time(fixture_simcore: Simcore) -> None:
    db = fixture_simcore.destination_db
    async with project_locks(db, wait=0.5) as first:
        await first.acquire([A, B])
        assert await held_by_others(fixture_simcore) == 2
        async with project_locks(db, wait=0.5) as second:
            with pytest.raises(MigrationBusy, match=rf"^another migration of {B} is running \(or its rollback; waited 0.5 s"):
                await second.acquire([B, C])
            assert second.held == set() and await held_by_others(fixture_simcore) == 2  # C was given back
            await second.acquire([C])  # a project nobody holds is taken at once

            # the first run ends while a third one waits: the third gets the projects
            async with project_locks(db, wait=30) as third:
                waiting = asyncio.ensure_future(third.acquire([A, B]))
                await asyncio.sleep(0.5)
                assert not waiting.done()
                await first.conn.invalidate()  # its connection goes (a killed run): PostgreSQL releases its locks
                await asyncio.wait_for(waiting, 30)
                assert third.held == {A, B}
                # the first run, back before its insert, finds its locks gone with their connection
                with pytest.raises(MigrationBusy, match=f"the lock of {A}, {B} went with its lost database connection "
                                                        "and another run holds it now"):
                    await first.confirm()
                # the third one loses its connection too: nobody took the projects meanwhile, it takes them again
                await third.conn.invalidate()
                await third.confirm()
                assert third.held == {A, B} and await held_by_others(fixture_simcore) == 3
    assert await held_by_others(fixture_simcore) == 0
