"""Local, throwaway osparc-like deployments (PostgreSQL + SeaweedFS) for the demo, tests and bench;
Ceph's RADOS Gateway as another S3 server for the tests (:class:`CephServer`).

>>> sandbox = Sandbox(Path("/tmp/x")).start()
>>> db = await sandbox.source.create_database("simcore")
>>> s3 = await sandbox.source.create_bucket("simcore")
>>> sandbox.stop()
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import asyncpg

from ..settings import DatabaseSettings, S3Settings
from .ceph import CephServer
from .processes import ServerError
from .servers import PostgresServer, S3Store, SeaweedServer, find_pg_bindir, free_port
from .simcore import FIXTURE_REVISION, Identities, load_schema, schema_sql, seed

__all__ = [
    "CephServer",
    "FIXTURE_REVISION",
    "Identities",
    "LocalDeployment",
    "PostgresServer",
    "S3Store",
    "Sandbox",
    "SeaweedServer",
    "ServerError",
    "find_pg_bindir",
    "free_port",
    "load_schema",
    "schema_sql",
    "seed",
]


class LocalDeployment:
    """One deployment: a PostgreSQL server and an S3 server, each with its own credentials."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.pg_password = secrets.token_urlsafe(18)
        self.s3_access_key = f"AK{secrets.token_hex(8).upper()}"
        self.s3_secret_key = secrets.token_urlsafe(30)
        self.pg = PostgresServer(workdir / "postgres", password=self.pg_password)
        self.s3 = SeaweedServer(workdir / "seaweedfs", access_key=self.s3_access_key, secret_key=self.s3_secret_key)

    def database(self, name: str) -> DatabaseSettings:
        return DatabaseSettings(
            host=self.pg.host, port=self.pg.port, user=self.pg.user, password=self.pg_password, database=name
        )

    def bucket(self, name: str) -> S3Settings:
        return self.s3.bucket(name)

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.pg.host, port=self.pg.port, user=self.pg.user, password=self.pg_password, database="postgres"
        )

    async def create_database(self, name: str, template: str | None = None) -> DatabaseSettings:
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        finally:
            await conn.close()
        return self.database(name)

    async def drop_database(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def create_simcore_database(
        self, name: str, *, users: list[str], groups: list[str] = (), skip_user_ids: int = 0,  # type: ignore[assignment]
        sql: str | None = None, revision: str = FIXTURE_REVISION,
    ) -> tuple[DatabaseSettings, Identities]:
        """A database with the osparc schema (fixture or ``$PROJMIG_TEST_SCHEMA_SQL``) and seed rows."""
        db = await self.create_database(name)
        await load_schema(db, sql if sql is not None else schema_sql()[0], revision)
        identities = await seed(db, users=users, groups=groups, skip_user_ids=skip_user_ids)
        return db, identities

    async def create_bucket(self, name: str) -> S3Settings:
        return await self.s3.create_bucket(name)


class Sandbox:
    """Source and destination deployments on 127.0.0.1: two PostgreSQL and two SeaweedFS servers."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.source = LocalDeployment("source", self.workdir / "source")
        self.destination = LocalDeployment("destination", self.workdir / "destination")

    @property
    def deployments(self) -> tuple[LocalDeployment, LocalDeployment]:
        return self.source, self.destination

    def start(self) -> Sandbox:
        try:
            for dep in self.deployments:
                dep.s3.spawn()  # weed starts in the background while PostgreSQL initialises
            for dep in self.deployments:
                dep.pg.start()
            for dep in self.deployments:
                dep.s3.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, remove: bool = False) -> None:
        servers = [server for dep in self.deployments for server in (dep.s3, dep.pg)]
        for server in servers:  # all at once: each takes seconds to shut down
            server.request_stop()
        for server in servers:
            server.stop()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
