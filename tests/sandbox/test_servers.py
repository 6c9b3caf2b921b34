"""The harness really runs two PostgreSQL and two SeaweedFS servers, independent of each other."""

from __future__ import annotations

import os

import asyncpg
import pytest
from botocore.exceptions import ClientError

from projmig.s3 import s3_client
from projmig.sandbox import Sandbox
from projmig.sandbox.simcore import asyncpg_dsn

from ..conftest import unique


def test_four_real_server_processes(sandbox: Sandbox) -> None:
    pids = [dep.pg.pid for dep in sandbox.deployments] + [dep.s3.process.pid for dep in sandbox.deployments]
    assert len(set(pids)) == 4
    for pid in pids:
        os.kill(pid, 0)  # raises if the process does not exist
    names = {open(f"/proc/{pid}/comm").read().strip() for pid in pids}
    assert names == {"postgres", "weed"}
    ports = {dep.pg.port for dep in sandbox.deployments} | {dep.s3.s3_port for dep in sandbox.deployments}
    assert len(ports) == 4


async def test_postgres_servers_are_independent(sandbox: Sandbox) -> None:
    name = unique("indep").replace("-", "_")
    source = await sandbox.source.create_database(name)
    await sandbox.destination.create_database(name)
    conn = await asyncpg.connect(asyncpg_dsn(source))
    await conn.execute("CREATE TABLE marker (v text); INSERT INTO marker VALUES ('written through the source')")
    assert await conn.fetchval("SELECT v FROM marker") == "written through the source"
    await conn.close()
    conn = await asyncpg.connect(asyncpg_dsn(sandbox.destination.database(name)))
    assert await conn.fetchval("SELECT to_regclass('marker')") is None
    await conn.close()


async def test_postgres_requires_the_password(sandbox: Sandbox) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host="127.0.0.1", port=sandbox.source.pg.port, user="postgres", password="wrong", database="postgres")


async def test_s3_servers_are_independent(sandbox: Sandbox) -> None:
    bucket = unique("indep")
    source = await sandbox.source.create_bucket(bucket)
    async with s3_client(source) as client:
        await client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
        resp = await client.get_object(Bucket=bucket, Key="a/b.txt")
        assert await resp["Body"].read() == b"hello"
    async with s3_client(sandbox.destination.bucket(bucket)) as client:
        with pytest.raises(ClientError) as info:
            await client.head_bucket(Bucket=bucket)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


async def test_s3_rejects_other_credentials_and_never_creates_buckets(sandbox: Sandbox) -> None:
    bucket = unique("creds")
    await sandbox.source.create_bucket(bucket)
    wrong = sandbox.destination.bucket(bucket).model_copy(update={"endpoint": sandbox.source.s3.endpoint})
    async with s3_client(wrong) as client:
        with pytest.raises(ClientError):
            await client.list_objects_v2(Bucket=bucket)
    async with s3_client(sandbox.source.bucket(bucket)) as client:
        with pytest.raises(ClientError) as info:
            await client.put_object(Bucket=unique("missing"), Key="x", Body=b"1")
        assert info.value.response["Error"]["Code"] == "NoSuchBucket"


def test_a_session_prefect_api_that_died_is_started_again(prefect_session_api, request: pytest.FixtureRequest) -> None:
    """One worker's Prefect server once stopped answering mid-session and every later test on that
    worker errored at setup: the ``prefect`` fixture now starts it again, and says so with its log."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    prefect_session_api.process.kill()
    prefect_session_api.process.wait()
    assert not prefect_session_api.healthy()
    with pytest.warns(UserWarning, match=r"(?s)stopped answering \(exit status -9\); started again\. Its log:"):
        request.getfixturevalue("prefect")
    assert PREFECT_API_URL.value() == prefect_session_api.url
    assert httpx.get(f"{prefect_session_api.url}/health", timeout=10).json() is True
