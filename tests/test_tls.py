"""TLS to PostgreSQL (``db.ssl``) and to S3 endpoints (``s3.verify``, ``s3.ca_bundle``), against a
PostgreSQL started with ``ssl=on`` and a SeaweedFS serving S3 over https, both with a certificate from
a CA this test makes (trustme). verify-full succeeds with that CA and fails with one line without it."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from sqlalchemy import text

from projmig.db import open_engine
from projmig.errors import PreflightError
from projmig.probes import check_bucket
from projmig.s3 import Retrier, s3_client
from projmig.s3data import data_path
from projmig.sandbox.servers import PostgresServer, SeaweedServer
from projmig.settings import DatabaseSettings, Provider, S3Settings

from .conftest import Simcore

PROJMIG = str(Path(sys.executable).parent / "projmig")


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass
class TlsServers:
    files: TlsFiles
    postgres: PostgresServer
    seaweed: SeaweedServer

    def db(self, **tls: str) -> DatabaseSettings:
        pg = self.postgres
        return DatabaseSettings(host="127.0.0.1", port=pg.port, user=pg.user, password=pg.password, database="postgres", **tls)

    def s3(self, bucket: str = "tls-bucket", **tls: object) -> S3Settings:
        sw = self.seaweed
        return S3Settings(endpoint=sw.endpoint, provider=Provider.MINIO, access_key=sw.access_key,
                          secret_key=sw.secret_key, bucket=bucket, **tls)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServers]:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(ca=root / "ca.pem", cert=root / "server.pem", key=root / "server.key")
    ca.cert_pem.write_to_path(str(files.ca))
    issued.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)  # PostgreSQL refuses a key others can read
    with files.cert.open("wb") as out:
        for blob in issued.cert_chain_pems:
            out.write(blob.bytes())
    postgres = PostgresServer(root / "pg", password=secrets.token_urlsafe(12), settings={
        "ssl": "on", "ssl_cert_file": str(files.cert), "ssl_key_file": str(files.key),
    })
    seaweed = SeaweedServer(root / "s3", access_key="tls-access", secret_key=secrets.token_urlsafe(16),
                            tls=(files.cert, files.key))
    postgres.start()
    try:
        seaweed.start()
        try:
            yield TlsServers(files, postgres, seaweed)
        finally:
            seaweed.stop()
    finally:
        postgres.stop()


async def connection_is_encrypted(db: DatabaseSettings) -> bool:
    async with open_engine(db, "source") as engine, engine.connect() as conn:
        return await conn.scalar(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))


async def test_database_verify_full_with_the_ca(tls_servers: TlsServers) -> None:
    ca = str(tls_servers.files.ca)
    assert await connection_is_encrypted(tls_servers.db(ssl="verify-full", ssl_root_cert=ca))
    assert await connection_is_encrypted(tls_servers.db(ssl="verify-ca", ssl_root_cert=ca))
    pg = tls_servers.postgres
    dsn = f"postgresql://{pg.user}:{pg.password}@127.0.0.1:{pg.port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    assert await connection_is_encrypted(DatabaseSettings(dsn=dsn))
    assert await connection_is_encrypted(tls_servers.db(ssl="require"))  # encrypted, not verified
    assert not await connection_is_encrypted(tls_servers.db(ssl="disable"))


async def test_database_verify_full_without_the_ca_is_one_line(tls_servers: TlsServers) -> None:
    with pytest.raises(PreflightError) as refused:
        await connection_is_encrypted(tls_servers.db(ssl="verify-full"))
    (problem,) = refused.value.problems
    assert problem.startswith(f"source database 127.0.0.1:{tls_servers.postgres.port}/postgres: TLS: the server's certificate is not trusted")
    assert "ssl_root_cert" in problem


async def test_the_cli_says_so_in_one_line(tls_servers: TlsServers, fixture_simcore: Simcore, tmp_path: Path) -> None:
    config = fixture_simcore.config("00000000-0000-0000-0000-000000000001")
    pg = tls_servers.postgres
    config["source"]["db"] = {"host": "127.0.0.1", "port": pg.port, "user": pg.user, "password": pg.password,
                              "database": "postgres", "ssl": "verify-full"}
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    result = subprocess.run([PROJMIG, "plan", "--config", str(cfg)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PREFECT_API_URL": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: source database") and "TLS: the server's certificate is not trusted" in line, line
    assert pg.password not in result.stdout + result.stderr


async def test_s3_over_https_with_the_ca_bundle(tls_servers: TlsServers) -> None:
    trusted = tls_servers.s3(ca_bundle=str(tls_servers.files.ca))
    assert trusted.endpoint and trusted.endpoint.startswith("https://")
    async with s3_client(trusted) as client:
        await client.create_bucket(Bucket=trusted.bucket)
        await client.put_object(Bucket=trusted.bucket, Key="a/b.bin", Body=b"x" * 1000)
        # the lean data path (aiohttp) uses the same CA
        async with data_path(trusted, client) as lean:
            await lean.put(trusted.bucket, "a/lean.bin", b"y" * 2000)
            body = bytearray(1000)
            _, got = await lean.get(trusted.bucket, "a/b.bin", memoryview(body))
            assert got == 1000 and body == b"x" * 1000
        listed = await client.list_objects_v2(Bucket=trusted.bucket)
    assert sorted(o["Key"] for o in listed["Contents"]) == ["a/b.bin", "a/lean.bin"]
    retry = Retrier(attempts=1, timeout=20)
    assert await check_bucket("destination", trusted, retry, listing=True, write_probe_key="probe") == ([], True, True)
    assert await check_bucket("destination", tls_servers.s3(verify=False), retry, listing=True, write_probe_key=None) == ([], None, None)

    problems = (await check_bucket("destination", tls_servers.s3(), retry, listing=True, write_probe_key=None)).problems
    assert len(problems) == 1 and "TLS: the endpoint's certificate is not trusted" in problems[0], problems
    assert tls_servers.seaweed.secret_key not in problems[0]
