"""Migrations whose source S3, destination S3 and destination PostgreSQL are reached through fault
proxies (``tests/faults/proxy.py``), and what every fault test checks afterwards.

The proxies live for the session (their servers do), one set per pair of S3 implementations; each
test gets them healed and with fresh counters. ``Faulty.settings()`` points a migration at the proxies, ``Faulty.direct()`` at the servers
themselves (for checks that must not be disturbed by the faults under test).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from projmig.buckets import list_uploads
from projmig.s3 import Retrier, s3_client
from projmig.sandbox import Sandbox
from projmig.sandbox.sample import SampleProject, SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.schema import PROJECT_TABLES
from projmig.settings import MigrationSettings

from ..conftest import SEAWEEDFS, Simcore, Templates, make_simcore, remove_ceph_buckets, s3_servers, schemas
from .proxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
retry = Retrier(attempts=3, timeout=60, initial_wait=0.05)


@dataclass
class Proxies:
    src_s3: FaultProxy
    dst_s3: FaultProxy
    dst_db: FaultProxy

    def each(self) -> tuple[FaultProxy, FaultProxy, FaultProxy]:
        return self.src_s3, self.dst_s3, self.dst_db

    def heal(self) -> None:
        for proxy in self.each():
            proxy.heal()

    def reset_counts(self) -> None:
        for proxy in self.each():
            proxy.reset_counts()

    def faults(self) -> list[str]:
        return [f"{p.name}: {f}" for p in self.each() for f in p.faults]


@pytest.fixture(scope="session")
def proxy_sets(request: pytest.FixtureRequest, sandbox: Sandbox) -> Iterator[Callable[[tuple[str, str]], Proxies]]:
    """(source, destination) S3 implementations -> the proxies in front of those servers, started on
    first use and kept for the session."""
    made: dict[tuple[str, str], Proxies] = {}

    def proxies_for(pair: tuple[str, str]) -> Proxies:
        if pair not in made:
            source, destination = s3_servers(request, sandbox, pair)
            made[pair] = Proxies(
                src_s3=FaultProxy("127.0.0.1", source.s3_port, name="source-s3", http=True),
                dst_s3=FaultProxy("127.0.0.1", destination.s3_port, name="destination-s3", http=True),
                dst_db=FaultProxy(sandbox.destination.pg.host, sandbox.destination.pg.port, name="destination-db"),
            )
            for proxy in made[pair].each():
                proxy.start()
        return made[pair]

    try:
        yield proxies_for
    finally:
        for proxies in made.values():
            for proxy in proxies.each():
                proxy.stop()


@pytest.fixture
def proxies(request: pytest.FixtureRequest, proxy_sets: Callable[[tuple[str, str]], Proxies]) -> Iterator[Proxies]:
    """This test's proxies, healed and with fresh counters: in front of the SeaweedFS servers, or of
    the pair the test's ``faulty`` is parametrized with."""
    chosen = proxy_sets(pair_of(request))
    chosen.heal()
    chosen.reset_counts()
    yield chosen
    chosen.heal()


def pair_of(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The S3 pair a test asked for (``faulty`` parametrized indirectly), else SeaweedFS -> SeaweedFS."""
    callspec = getattr(request.node, "callspec", None)
    return callspec.params.get("faulty", (SEAWEEDFS, SEAWEEDFS)) if callspec is not None else (SEAWEEDFS, SEAWEEDFS)


@dataclass
class Faulty:
    """One test's source and destination deployments, and the proxies in front of them."""

    env: Simcore
    proxies: Proxies

    def settings(self, project_uuid: str, **options: Any) -> MigrationSettings:
        """A migration through the proxies (source DB direct: it is not under test)."""
        env, p = self.env, self.proxies
        return env.settings(
            project_uuid,
            source={"s3": env.source_s3.model_copy(update={"endpoint": p.src_s3.endpoint})},
            destination={
                "s3": env.destination_s3.model_copy(update={"endpoint": p.dst_s3.endpoint}),
                "db": env.destination_db.model_copy(update={"host": p.dst_db.host, "port": p.dst_db.port}),
            },
            options=options,
        )

    def direct(self, project_uuid: str, **options: Any) -> MigrationSettings:
        return self.env.settings(project_uuid, options=options)

    def config_file(self, path: Path, project_uuid: str, **options: Any) -> Path:
        """The proxied settings as a cfg.json (credentials in clear: test servers only)."""
        direct = self.env.config(project_uuid, options=options)
        settings = self.settings(project_uuid, **options)
        direct["source"]["s3"]["endpoint"] = settings.source.s3.endpoint
        direct["destination"]["s3"]["endpoint"] = settings.destination.s3.endpoint
        direct["destination"]["db"].update(host=settings.destination.db.host, port=settings.destination.db.port)
        path.write_text(json.dumps(direct))
        return path

    async def sample(self, **spec: Any) -> SampleProject:
        defaults = dict(hidden_children=0, deployment_bound_rows=False, special_names=True)
        return await build_sample_project(
            self.env.source_db, self.env.source_s3, owner_id=self.env.alice, spec=SampleSpec(**{**defaults, **spec})
        )


@pytest.fixture
async def faulty(
    request: pytest.FixtureRequest, sandbox: Sandbox, templates: dict[str, Templates], proxies: Proxies
) -> AsyncIterator[Faulty]:
    """Fresh deployments behind the proxies: SeaweedFS on both sides on the fixture schema; or, with
    ``@pytest.mark.parametrize("faulty", CEPH_PAIRS, indirect=True)``, that S3 pair on the real
    schema when it is given."""
    pair = pair_of(request)
    if pair == (SEAWEEDFS, SEAWEEDFS):
        env = await make_simcore(sandbox, templates, "fixture")
    else:
        env = await make_simcore(sandbox, templates, schemas()[-1], s3_servers(request, sandbox, pair), pair)
    yield Faulty(env, proxies)
    await remove_ceph_buckets(env)
    await sandbox.source.drop_database(env.source_db.database or "")
    await sandbox.destination.drop_database(env.destination_db.database or "")


# -- what the tests look at -------------------------------------------------------------------------


async def open_uploads(settings: MigrationSettings) -> list[dict[str, Any]]:
    """Every open multipart upload in the destination bucket (not only ours: nothing may be left)."""
    async with s3_client(settings.destination.s3) as client:
        return await list_uploads(client, settings.destination.s3.bucket, "", retry)


async def destination_keys(settings: MigrationSettings) -> dict[str, int]:
    async with s3_client(settings.destination.s3) as client:
        found: dict[str, int] = {}
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=settings.destination.s3.bucket)
        async for page in pages:
            found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return found


async def row_counts(settings: MigrationSettings, uuids: list[str]) -> dict[str, int]:
    """Rows of these projects per project table in the destination (direct connection)."""
    conn = await asyncpg.connect(asyncpg_dsn(settings.destination.db))
    try:
        counts = {}
        for table in PROJECT_TABLES:
            column = {"projects": "uuid", "file_meta_data": "project_id"}.get(table, "project_uuid")
            counts[table] = await conn.fetchval(f'SELECT count(*) FROM "{table}" WHERE {column} = ANY($1::text[])', uuids)
        return counts
    finally:
        await conn.close()


async def duplicate_rows(settings: MigrationSettings) -> dict[str, int]:
    """Rows that appear more than once by their natural key (a primary key would stop most)."""
    keys = {"projects": "uuid", "projects_nodes": "project_uuid, node_id", "file_meta_data": "file_id",
            "project_to_groups": "project_uuid, gid", "projects_metadata": "project_uuid"}
    conn = await asyncpg.connect(asyncpg_dsn(settings.destination.db))
    try:
        found = {}
        for table, key in keys.items():
            n = await conn.fetchval(f'SELECT count(*) - count(DISTINCT ({key})) FROM "{table}"')
            if n:
                found[table] = n
        return found
    finally:
        await conn.close()


def all_or_nothing(counts: dict[str, int], expected: dict[str, int]) -> str | None:
    """None when the destination holds every row of the migration or none; else what is partial."""
    if all(counts.get(t, 0) == 0 for t in expected) or all(counts.get(t, 0) == n for t, n in expected.items()):
        return None
    return ", ".join(f"{t} {counts.get(t, 0)}/{n}" for t, n in expected.items())


# -- a migration in a process of its own, to kill -------------------------------------------------


def prefect_env() -> dict[str, str]:
    """The environment a migration subprocess needs to use this session's Prefect API (and its
    result storage), instead of starting an ephemeral server of its own (~20 s)."""
    import prefect.settings

    env = dict(os.environ)
    env["PREFECT_API_URL"] = str(prefect.settings.PREFECT_API_URL.value())
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Kill:
    """A trigger action for the proxies: ``kill -9`` the migration process, and let nothing leave that
    it had not sent yet (a real kill stops the sender; the proxy would still relay what it holds)."""

    __name__ = "kill -9"

    def __init__(self, proxies: Proxies):
        self.proxies = proxies
        self.process: MigrationProcess | None = None

    def start(self, config: Path, *args: str) -> MigrationProcess:
        self.process = MigrationProcess(config, *args)
        return self.process

    def __call__(self) -> None:
        if self.process is not None:
            self.process.kill()
        for proxy in self.proxies.each():
            proxy.cut(then="refuse")


class MigrationProcess:
    """``projmig migrate --config cfg.json`` (``args`` added, e.g. ``--no-prefect``) in a subprocess,
    killable with SIGKILL at any moment."""

    def __init__(self, config: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "migrate", "--config", str(config), *args],
            cwd=REPO, env=prefect_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.killed = False

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind runs in the migration."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.killed = True

    def interrupt(self) -> None:
        """Ctrl-C (SIGINT), as an operator stops the command."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            self.killed = True

    async def wait(self, timeout: float = 300) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        out, _ = await loop.run_in_executor(None, lambda: self.proc.communicate(timeout=timeout))
        return self.proc.returncode, out.decode(errors="replace")
