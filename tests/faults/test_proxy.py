"""The fault proxy itself, in front of the real destination SeaweedFS and PostgreSQL: the other
fault tests rely on it cutting exactly where it is told, counting right and answering errors."""

from __future__ import annotations

import os

import asyncpg
import pytest
from botocore.exceptions import ClientError

from projmig.s3 import is_transient, s3_client
from projmig.sandbox.simcore import asyncpg_dsn

from .conftest import Faulty

MiB = 1024 * 1024


async def test_cuts_a_put_after_exactly_n_bytes_then_refuses_until_healed(faulty: Faulty) -> None:
    proxy = faulty.proxies.dst_s3
    s3 = faulty.settings("00000000-0000-0000-0000-000000000000").destination.s3
    async with s3_client(s3) as client:
        await client.put_object(Bucket=s3.bucket, Key="warm", Body=b"x")  # a pooled connection exists
        proxy.reset_counts()
        proxy.after(up=1 * MiB, do="cut", then="refuse")
        with pytest.raises(Exception) as cut:
            await client.put_object(Bucket=s3.bucket, Key="big", Body=os.urandom(3 * MiB))
        assert is_transient(cut.value), repr(cut.value)
        assert proxy.up == 1 * MiB and len(proxy.faults) == 1
        with pytest.raises(Exception) as refused:
            await client.head_bucket(Bucket=s3.bucket)
        assert is_transient(refused.value) and proxy.refused >= 1
        proxy.heal()
        await client.put_object(Bucket=s3.bucket, Key="big", Body=b"y" * MiB)
        assert (await client.head_object(Bucket=s3.bucket, Key="big"))["ContentLength"] == MiB


async def test_answers_chosen_requests_with_an_s3_error_then_forwards(faulty: Faulty) -> None:
    proxy = faulty.proxies.dst_s3
    s3 = faulty.settings("00000000-0000-0000-0000-000000000000").destination.s3
    async with s3_client(s3) as client:
        proxy.fail_requests(2, 503, "SlowDown", match=lambda method, target: method == "PUT")
        for _ in range(2):
            with pytest.raises(ClientError) as slow:
                await client.put_object(Bucket=s3.bucket, Key="k", Body=os.urandom(100_000))
            assert slow.value.response["Error"]["Code"] == "SlowDown" and is_transient(slow.value)
        await client.put_object(Bucket=s3.bucket, Key="k", Body=b"third time")
        assert [r.method for r in proxy.requests] == ["PUT", "PUT", "PUT"]
        assert len(proxy.faults) == 2


async def test_kills_the_database_connection_before_a_statement_leaves(faulty: Faulty) -> None:
    proxy = faulty.proxies.dst_db
    db = faulty.settings("00000000-0000-0000-0000-000000000000").destination.db
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        await conn.execute("CREATE TABLE t (x int)")
        proxy.after(match=b"INSERT INTO t", do="cut")
        with pytest.raises((ConnectionError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
    finally:
        await conn.close()
    direct = await asyncpg.connect(asyncpg_dsn(faulty.env.destination_db))
    try:
        assert await direct.fetchval("SELECT count(*) FROM t") == 0
    finally:
        await direct.close()
