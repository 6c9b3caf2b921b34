"""Real servers for the whole session: two PostgreSQL and two SeaweedFS (source, destination), and
a Ceph cluster with its RADOS Gateway when a test asks for it (started once, shared).

Every test that needs deployments gets fresh databases (copies of a template that holds the
schema and seed rows, so identities are the same in every test) and fresh buckets.

With ``PROJMIG_TEST_SCHEMA_SQL`` naming the real osparc-simcore schema dump, the tests that take
the ``simcore`` fixture run twice: on projmig's fixture schema and on the real one. The tests that
take ``provider_simcore`` also run between S3 implementations (SeaweedFS -> Ceph, Ceph ->
SeaweedFS), on the real schema when it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import os
import secrets
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from projmig import steps
from projmig.buckets import ObjectState
from projmig.insert import InsertResult
from projmig.locks import LOCK_SPACE
from projmig.marks import COPY_MARK, create_recorded_upload, mark_of
from projmig.plan import MigrationPlan, ObjectCopy
from projmig.run import MigrationRun
from projmig.s3 import Retrier, s3_client
from projmig.sandbox import CephServer, Identities, S3Store, Sandbox, ServerError, free_port
from projmig.sandbox.processes import answers, log_tail, prefect_server_env, start_prefect_server, stop_process
from projmig.sandbox.simcore import SCHEMA_SQL_ENV, asyncpg_dsn, fixture_schema_sql, load_schema, seed
from projmig.settings import DatabaseSettings, MigrationSettings, S3Settings
from projmig.verify import verified_states

from .releases_fixtures import osparc, source_server, staging_server  # noqa: E402

RELEASE_FIXTURES = (osparc, source_server, staging_server)  # osparc's releases: every test module may take them

# before anything imports Prefect: a PREFECT_HOME of the session's own, no telemetry
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="projmig-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SOURCE_USERS = ["alice", "bob"]
DESTINATION_USERS = ["admin", "carol"]
_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def schemas() -> list[str]:
    return ["fixture", "real"] if os.environ.get(SCHEMA_SQL_ENV) else ["fixture"]


SEAWEEDFS, CEPH = "seaweedfs", "ceph"
CEPH_PAIRS = [(SEAWEEDFS, CEPH), (CEPH, SEAWEEDFS)]  # (source, destination) S3 implementations


def provider_cases() -> list[tuple[str, tuple[str, str]]]:
    """(schema, S3 pair): SeaweedFS on both sides on every schema; the Ceph pairs on the real schema
    when it is given (that is what deployments run), else on the fixture."""
    return [(schema, (SEAWEEDFS, SEAWEEDFS)) for schema in schemas()] + [
        (schemas()[-1], pair) for pair in CEPH_PAIRS
    ]


def case_id(case: tuple[str, tuple[str, str]]) -> str:
    schema, (source, destination) = case
    return f"{schema}-{source}-to-{destination}"


# -- tiers ----------------------------------------------------------------------------------------
#
# Marks decided here from what a test takes (so that no list of files needs keeping up to date):
# ``prefect_api`` (the session's Prefect API, or a Prefect server of the test's own), ``ceph`` (the
# Ceph cluster, as a fixture or as a side of an S3 pair), ``fault_proxy`` (the fault proxies). Every
# other test is ``quick``: pure, or on the session's PostgreSQL and SeaweedFS servers only (`make
# test-quick`). A test that starts one of these servers itself carries its mark explicitly.
#
# `make test` runs the suite on parallel workers (pytest-xdist, ``--dist loadgroup``): each worker is a
# session of its own, with its own servers (ports: projmig.sandbox.free_port), temporary directories
# and PREFECT_HOME (above). Session servers are not grouped for (Ceph starts in ~2 s, the Prefect API
# in ~10 s); a module whose fixture costs a minute or more keeps its tests on one worker
# (``xdist_group``: the docs' examples, the deployment boundaries' setup), as do tests that share
# osparc's migrated templates (``osparc-releases``).

MARKS_BY_FIXTURE = {
    "prefect": "prefect_api", "prefect_session_api": "prefect_api", "prefect_server": "prefect_api",
    "ceph": "ceph",
    "faulty": "fault_proxy", "proxies": "fault_proxy", "dst_s3_proxy": "fault_proxy",
    "source_server": "slow", "staging_server": "slow",
}
SLOW_MARKS = {"prefect_api", "ceph", "fault_proxy", "slow"}


def takes_ceph(item: pytest.Item) -> bool:
    """The ``ceph`` fixture, or a parameter naming Ceph (an S3 pair, a destination)."""
    def names_ceph(value: object) -> bool:
        return value == CEPH or isinstance(value, tuple) and any(names_ceph(part) for part in value)

    callspec = getattr(item, "callspec", None)
    return "ceph" in item.fixturenames or callspec is not None and any(map(names_ceph, callspec.params.values()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = {MARKS_BY_FIXTURE[name] for name in item.fixturenames if name in MARKS_BY_FIXTURE}
        if takes_ceph(item):
            marks.add("ceph")
        for mark in sorted(marks - {m.name for m in item.iter_markers()}):
            item.add_marker(mark)
        if not SLOW_MARKS & {m.name for m in item.iter_markers()}:
            item.add_marker("quick")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On an xdist worker under ``--dist loadgroup``, a grouped test's node id carries its group
    (``...@docs-examples``): that suffix is how the controller keeps the group on one worker. With a
    pytest whose node ids xdist cannot change (9.2: pytest-xdist issue 1386) the groups would spread
    silently; their tests fail here instead, saying so."""
    if getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail("--dist loadgroup does not keep this xdist_group on one worker: this pytest and pytest-xdist "
                    "do not work together (pyproject.toml's pin says which pytest)", pytrace=False)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("sandbox")).start()
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephServer]:
    """One Ceph cluster + RADOS Gateway for the session, started by the first test that needs it."""
    server = CephServer(
        tmp_path_factory.mktemp("ceph"), access_key=f"AK{secrets.token_hex(8).upper()}", secret_key=secrets.token_urlsafe(30)
    ).start()
    try:
        yield server
    finally:
        server.stop()


def s3_servers(request: pytest.FixtureRequest, sandbox: Sandbox, pair: tuple[str, str]) -> tuple[S3Store, S3Store]:
    """The (source, destination) S3 servers of a pair: SeaweedFS is the sandbox's server of that
    side; Ceph is the session's one cluster (never both sides of a pair here)."""
    source = request.getfixturevalue("ceph") if pair[0] == CEPH else sandbox.source.s3
    destination = request.getfixturevalue("ceph") if pair[1] == CEPH else sandbox.destination.s3
    return source, destination


@dataclass
class Templates:
    source_ids: Identities
    destination_ids: Identities


@pytest.fixture(scope="session")
async def templates(sandbox: Sandbox) -> dict[str, Templates]:
    """Per schema: a template database with schema + seed rows on each server."""
    made = {}
    for schema in schemas():
        sql = Path(os.environ[SCHEMA_SQL_ENV]).read_text() if schema == "real" else fixture_schema_sql()
        ids = []
        for dep, users, groups, skip in (
            (sandbox.source, SOURCE_USERS, ["lab"], 0),
            (sandbox.destination, DESTINATION_USERS, [], 10),
        ):
            db = await dep.create_database(f"tpl_{schema}")
            await load_schema(db, sql)
            ids.append(await seed(db, users=users, groups=groups, skip_user_ids=skip))
        made[schema] = Templates(source_ids=ids[0], destination_ids=ids[1])
    return made


@dataclass
class Simcore:
    """A source and a destination deployment, fresh for one test."""

    schema: str
    source_db: DatabaseSettings
    source_s3: S3Settings
    destination_db: DatabaseSettings
    destination_s3: S3Settings
    source_ids: Identities
    destination_ids: Identities
    sandbox: Sandbox
    providers: tuple[str, str] = (SEAWEEDFS, SEAWEEDFS)  # S3 implementations of source, destination

    @property
    def alice(self) -> int:
        return self.source_ids.users["alice"].id

    @property
    def carol(self) -> int:
        return self.destination_ids.users["carol"].id

    def settings(self, project_uuid: str | None = None, **parts: Any) -> MigrationSettings:
        source = {"db": self.source_db, "s3": self.source_s3, "project_uuid": project_uuid, **parts.pop("source", {})}
        destination = {"db": self.destination_db, "s3": self.destination_s3, "user_id": self.carol,
                       **parts.pop("destination", {})}
        return MigrationSettings(source=source, destination=destination, **parts)

    def config(self, project_uuid: str | None = None, **parts: Any) -> dict[str, Any]:
        """The settings as a cfg.json would hold them (secrets in clear text: test servers only)."""
        settings = self.settings(project_uuid, **parts)
        data = settings.model_dump(mode="json", exclude_none=True)
        for side, cfg in (("source", settings.source), ("destination", settings.destination)):
            data[side]["db"]["password"] = cfg.db.password.get_secret_value()  # type: ignore[union-attr]
            data[side]["s3"]["secret_key"] = cfg.s3.secret_key.get_secret_value()  # type: ignore[union-attr]
            data[side]["s3"]["access_key"] = cfg.s3.access_key.get_secret_value()  # type: ignore[union-attr]
        return data


async def make_simcore(
    sandbox: Sandbox, templates: dict[str, Templates], schema: str,
    s3: tuple[S3Store, S3Store] | None = None, providers: tuple[str, str] = (SEAWEEDFS, SEAWEEDFS),
) -> Simcore:
    """Fresh databases from the schema's templates and fresh buckets (``s3``: the (source,
    destination) S3 servers; default: the sandbox's SeaweedFS servers)."""
    source_s3, destination_s3 = s3 or (sandbox.source.s3, sandbox.destination.s3)
    name = unique(f"t_{schema}").replace("-", "_")
    source_db = await sandbox.source.create_database(name, template=f"tpl_{schema}")
    destination_db = await sandbox.destination.create_database(name, template=f"tpl_{schema}")
    return Simcore(
        schema=schema,
        source_db=source_db,
        source_s3=await source_s3.create_bucket(unique("src")),
        destination_db=destination_db,
        destination_s3=await destination_s3.create_bucket(unique("dst")),
        source_ids=templates[schema].source_ids,
        destination_ids=templates[schema].destination_ids,
        sandbox=sandbox,
        providers=providers,
    )


@pytest.fixture(params=schemas())
async def simcore(request: pytest.FixtureRequest, sandbox: Sandbox, templates: dict[str, Templates]) -> AsyncIterator[Simcore]:
    env = await make_simcore(sandbox, templates, request.param)
    yield env
    await sandbox.source.drop_database(env.source_db.database or "")
    await sandbox.destination.drop_database(env.destination_db.database or "")


async def empty_and_remove(bucket: S3Settings) -> None:
    """Delete a bucket with its objects and open uploads (Ceph's OSD keeps every object in memory)."""
    async with s3_client(bucket) as client:
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                await client.delete_objects(Bucket=bucket.bucket, Delete={"Objects": keys, "Quiet": True})
        uploads = await client.list_multipart_uploads(Bucket=bucket.bucket)
        for upload in uploads.get("Uploads", []):
            await client.abort_multipart_upload(Bucket=bucket.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        await client.delete_bucket(Bucket=bucket.bucket)


async def remove_ceph_buckets(env: Simcore) -> None:
    for side, bucket in zip(env.providers, (env.source_s3, env.destination_s3)):
        if side == CEPH:
            await empty_and_remove(bucket)


@pytest.fixture(params=provider_cases(), ids=case_id)
async def provider_simcore(
    request: pytest.FixtureRequest, sandbox: Sandbox, templates: dict[str, Templates]
) -> AsyncIterator[Simcore]:
    """Like ``simcore``, and also between S3 implementations (SeaweedFS -> Ceph, Ceph -> SeaweedFS)."""
    schema, pair = request.param
    env = await make_simcore(sandbox, templates, schema, s3_servers(request, sandbox, pair), pair)
    yield env
    await remove_ceph_buckets(env)
    await sandbox.source.drop_database(env.source_db.database or "")
    await sandbox.destination.drop_database(env.destination_db.database or "")


@pytest.fixture
async def fixture_simcore(sandbox: Sandbox, templates: dict[str, Templates]) -> AsyncIterator[Simcore]:
    """Like ``simcore``, on projmig's fixture schema only (for tests about one mechanism)."""
    env = await make_simcore(sandbox, templates, "fixture")
    yield env
    await sandbox.source.drop_database(env.source_db.database or "")
    await sandbox.destination.drop_database(env.destination_db.database or "")


@pytest.fixture
async def bucket_clients(fixture_simcore: Simcore) -> AsyncIterator[tuple[Any, Any, str, str]]:
    """(source client, destination client, source bucket, destination bucket), both on SeaweedFS."""
    async with s3_client(fixture_simcore.source_s3) as src, s3_client(fixture_simcore.destination_s3) as dst:
        yield src, dst, fixture_simcore.source_s3.bucket, fixture_simcore.destination_s3.bucket


@pytest.fixture(params=[SEAWEEDFS, CEPH])
async def destination_bucket(
    request: pytest.FixtureRequest, bucket_clients: tuple[Any, Any, str, str]
) -> AsyncIterator[tuple[Any, str]]:
    """(client, bucket) of a destination on SeaweedFS, or on Ceph's RADOS Gateway: projmig's marks and
    upload records are user metadata, which each server must keep."""
    if request.param == SEAWEEDFS:
        _, dst, _, db = bucket_clients
        yield dst, db
        return
    bucket = await request.getfixturevalue("ceph").create_bucket(unique("cephdst"))
    try:
        async with s3_client(bucket) as ceph:
            yield ceph, bucket.bucket
    finally:
        await empty_and_remove(bucket)


@pytest.fixture(scope="session", autouse=True)
def local_prefect_api() -> Iterator[None]:
    """A `projmig` command run without PREFECT_API_URL starts a local Prefect server in the session's
    PREFECT_HOME (flows/local_api.py); it is stopped when the session ends."""
    yield
    from flows.local_api import stop_local_api

    stop_local_api()


class SessionPrefectApi:
    """The session's Prefect API: Prefect's own server app under uvicorn in a process of its own, on a
    port claimed like every other server of the suite's (projmig.sandbox.free_port), SQLite in a
    directory of its own, its output in ``server.log`` there. A server that stops answering is started
    again on the same port (the tests that already ran keep their results) with a warning that
    carries the tail of its log, instead of every later test on this worker erroring at setup."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.database = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        env = prefect_server_env(os.environ, database=self.database, services=False)
        try:
            self.process = start_prefect_server(self.port, env=env, log=self.log, services=False, timeout=timeout)
        except ServerError as error:
            raise RuntimeError(f"the session's Prefect API did not start: {error}") from None

    def healthy(self) -> bool:
        return answers(f"{self.url}/health")

    def stop(self) -> None:
        stop_process(self.process, timeout=10, group=True)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """This server as Prefect's API (and its database as the server's, where tests look for what
        a run left behind), started again first if it stopped answering."""
        import prefect.context
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

        if not self.healthy():
            was = self.process.poll() if self.process else None
            warnings.warn(f"the session's Prefect API stopped answering (exit status {was}); started again. "
                          f"Its log:\n{self.log_tail()}", stacklevel=1)
            self.stop()
            self.start()
        with temporary_settings(updates={PREFECT_API_URL: self.url, PREFECT_SERVER_DATABASE_CONNECTION_URL: self.database}):
            with prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
                yield

    def log_tail(self) -> str:
        return log_tail(self.log)


@pytest.fixture(scope="session")
def prefect_session_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionPrefectApi]:
    api = SessionPrefectApi(tmp_path_factory.mktemp("prefect-api"))
    api.start()
    try:
        yield api
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.utilities.asyncutils import run_coro_as_sync

        async def drain() -> None:  # (as prefect_test_harness does, so that no late log or event hits a stopped server)
            for result in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
                if inspect.isawaitable(result):
                    await result

        try:
            with temporary_settings(updates={PREFECT_API_URL: api.url}):
                run_coro_as_sync(drain())
        finally:
            api.stop()


@pytest.fixture
def prefect(prefect_session_api: SessionPrefectApi) -> Iterator[None]:
    """The session's Prefect API as this test's PREFECT_API_URL (its first start is slow)."""
    with prefect_session_api.in_use():
        yield


# -- independent views of a deployment (the databases' own text, the objects' bytes) -------------


async def table_rows(db: DatabaseSettings) -> dict[str, list[str]]:
    """Every row of every table, as PostgreSQL renders it (``row_to_json(t)::text``), sorted."""
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {t: sorted(r[0] for r in await conn.fetch(f'SELECT row_to_json(t)::text FROM public."{t}" t'))
                for t in tables}
    finally:
        await conn.close()


async def object_digests(s3: S3Settings, prefix: str = "") -> dict[str, str]:
    """Every object under ``prefix``: key -> SHA-256 of its bytes."""
    async with s3_client(s3) as client:
        found: dict[str, str] = {}
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = await client.get_object(Bucket=s3.bucket, Key=item["Key"])
                async with body["Body"] as stream:
                    found[item["Key"]] = hashlib.sha256(await stream.read()).hexdigest()
        return found


async def copy_marks(s3: S3Settings, keys: Iterable[str]) -> dict[str, str | None]:
    """key -> the ``x-amz-meta-projmig-copy`` header its HEAD answers with, as the server sends it."""
    async with s3_client(s3) as client:
        return {
            key: (await client.head_object(Bucket=s3.bucket, Key=key))["ResponseMetadata"]["HTTPHeaders"].get(
                "x-amz-meta-projmig-copy")
            for key in keys
        }


def expected_marks(keys: Iterable[str]) -> dict[str, str]:
    """What docs/failures.md ("The mark") says each object copied under uuid_policy=keep carries: ``source=<its
    project>;copy=<its project>``."""
    return {key: f"source={key.split('/', 1)[0]};copy={key.split('/', 1)[0]}" for key in keys}


async def upload_started_by_projmig(client: Any, bucket: str, src_key: str, dst_key: str, **extra: Any) -> str:
    """A multipart upload as an earlier run of a migration leaves it: recorded and marked as projmig
    does (:mod:`projmig.marks`), so that a rerun, cleanup or rollback takes it for the migration's."""
    mark, retry = mark_of(src_key, dst_key), Retrier(attempts=3, timeout=60, initial_wait=0.05)
    metadata = {**extra.pop("Metadata", {}), COPY_MARK: mark}
    return await create_recorded_upload(client, bucket, dst_key, mark, retry, Metadata=metadata, **extra)


# -- holding a run at its insert, to start others meanwhile ---------------------------------------


HOLD = (0x686F6C64, 1)  # "hold": the advisory lock inserts wait for while a test holds them


class _Release:
    """What :func:`hold_inserts` returns to end the hold (``await held.rollback()``)."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def rollback(self) -> None:
        await self.conn.execute("SELECT pg_advisory_unlock($1, $2)", *HOLD)


async def hold_inserts(db: DatabaseSettings) -> tuple[asyncpg.Connection, Any]:
    """Hold every insert at its nodes (inside its transaction, after all its objects were copied)
    until ``held.rollback()``: a statement trigger on ``projects_nodes`` waits for an advisory lock
    this connection holds. (A lock on the table itself would also hold a preflight's reflection of it.)"""
    conn = await asyncpg.connect(asyncpg_dsn(db))
    await conn.execute(f"""
        CREATE OR REPLACE FUNCTION projmig_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_lock_shared({HOLD[0]}, {HOLD[1]}); PERFORM pg_advisory_unlock_shared({HOLD[0]}, {HOLD[1]});
              RETURN NULL; END $$;
        DROP TRIGGER IF EXISTS projmig_test_hold ON projects_nodes;
        CREATE TRIGGER projmig_test_hold BEFORE INSERT ON projects_nodes FOR EACH STATEMENT EXECUTE FUNCTION projmig_test_hold();""")
    await conn.execute("SELECT pg_advisory_lock($1, $2)", *HOLD)
    return conn, _Release(conn)


async def insert_is_held(db: DatabaseSettings) -> bool:
    """An insert waits at its nodes (:func:`hold_inserts`)."""
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory' AND classid = $1 "
            "AND objid = $2 AND objsubid = 2", *HOLD))
    finally:
        await conn.close()


async def held_at_insert_and_one_waiting(db: DatabaseSettings) -> bool:
    """One run's insert waits at its nodes (:func:`hold_inserts`), another run for the projects' lock
    (:mod:`projmig.locks`)."""
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        return await conn.fetchval("""
            SELECT count(*) FILTER (WHERE l.classid = $2 AND l.objid = $3) > 0
               AND count(*) FILTER (WHERE l.classid = $1 AND l.objsubid = 2) > 0
            FROM pg_locks l WHERE NOT l.granted AND l.locktype = 'advisory'""", LOCK_SPACE, *HOLD)
    finally:
        await conn.close()


async def wait_until(condition: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        await asyncio.sleep(0.3)


# -- a migration step by step, on one run (what the pipeline does, with a test's hands in between) -


async def verified_objects(run: MigrationRun, copies: list[ObjectCopy]) -> dict[str, ObjectState]:
    """Every planned object is in the destination with its source's size and ETag (else VerificationError)."""
    there, lacking = await steps.compare(run, copies)
    return verified_states(there, lacking, len(copies))


async def insert_rows(run: MigrationRun, plan: MigrationPlan, verified: dict[str, ObjectState]) -> InsertResult:
    """Every root project of the plan inserted (each in its transaction); the first failure raised."""
    total = InsertResult()
    for root in await steps.insert_roots(run, plan, verified, list(plan.roots())):
        if root.error is not None:
            raise root.error
        assert root.result is not None
        total.already_present += root.result.already_present
        for table, n in root.result.inserted.items():
            total.inserted[table] = total.inserted.get(table, 0) + n
    return total


async def migrate_by_steps(settings: MigrationSettings) -> MigrationPlan:
    """A migration's steps one by one, without Prefect (the pipeline runs them the same way)."""
    async with MigrationRun.open(settings) as run:
        report = await steps.preflight(run, probe_write=False)
        plan = steps.make_plan(await steps.read_graph(run, report), report)
        _, todo = await steps.compare(run, plan.copies)
        await steps.copy_objects(run.transfers, todo)
        await insert_rows(run, plan, await verified_objects(run, plan.copies))
    return plan
