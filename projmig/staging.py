"""The staging database: the selected projects' rows, and every row they reference, in a database
of their own, brought from the source's osparc revision to the destination's by osparc's own
migrations (:mod:`projmig.releases`). What lands in the destination is then what osparc's upgrade
(or downgrade) of the whole source database gives for those rows, without ever copying, or
migrating, the whole source.

How a staging is made (:func:`staging_database`):

1. **The closure**, read from the source in one ``REPEATABLE READ READ ONLY`` transaction (the
   source is only read): the selected projects' rows in every table of
   :data:`projmig.schema.PROJECT_TABLES` present at the source's revision, and in each table that
   references ``projects`` and that a migration on the way drops (its rows may be folded into the
   project tables first: ``projects_to_products`` becomes ``projects.product_name`` at
   ``ce69cc44246a``); then, recursively, every row those rows reference by a foreign key: the
   source's own foreign keys (reflected, not a hand list) and those the migrations on the way will
   create (``47dc5c0a138e`` makes ``file_meta_data.user_id`` reference ``users``: a file's user must
   be there before it runs; compared as text, since such a column may change type first). Rows are
   named by ``ctid`` (stable within the snapshot) and copied with ``COPY ... TO STDOUT`` in
   PostgreSQL's text form: the values are the source's own, and both sides are at one revision.
2. **The database**, on the staging server, a copy of a template made once per revision and server:
   an empty database brought to the source's revision by osparc's migrations, then emptied of the
   rows those migrations insert (the Everyone group, a default product: the closure brings the
   source's own).
3. **The load**, with ``session_replication_role = replica``: no trigger fires (the users trigger
   would create groups, the projects trigger access rows) and no foreign key is checked while the
   closure's tables arrive in any order. Each sequence is set to the source's value (at least to
   the largest id loaded), so that what the migrations insert next does not collide.
4. **The migrations** from the source's revision to the target, in the subprocess the server keeps
   for the run.

**Where it lives.** By default on a PostgreSQL server projmig starts for the run
(:meth:`StagingServer.start_local`: ``initdb`` in a temporary directory, 127.0.0.1, a free port,
``fsync=off``, a random password; as root in a user namespace, as the sandbox does): it is projmig's,
so it is superuser there, and nothing of it outlives the run. The operator may name a server instead
(:meth:`StagingServer.at`: a :class:`DatabaseSettings` whose user may create and drop databases and
set ``session_replication_role``, e.g. a superuser of a throwaway server). A server serves every
staging of a run (one template per revision, one migration subprocess); each staging database is
dropped when its ``async with`` ends.

**Cost**, measured here (2 cores, idle; several times this with the cores shared): projmig's own
server starts in ~1 s (``initdb``, ``pg_ctl``), while the migration subprocess imports (~0.65 s) and
the closure is read (~0.1 s); the template at ``447db39c5455`` takes ~1.5-3 s by osparc's migrations
(empty -> head ~2-7 s), once per server, or ~0.5 s restored from the schema cache
(``schema_cache``: a ``pg_dump`` of the template kept under a directory, keyed by the package's
digest, the revision and PostgreSQL's major version; needs ``pg_dump``); a database from the
template ~0.1-0.2 s; the load milliseconds per study; ``447db39c5455`` -> head ~0.25-0.4 s. One
study on a server of its own: ~6-8 s, then ~0.05 s to stop it (immediate shutdown). Each
additional study in the same staging: tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from .errors import ProjmigError
from .releases import ForeignKey, MigrationPath, MigrationRunner, OsparcMigrations, UnknownRevisionError, connect
from .schema import PROJECT_TABLES
from .settings import DatabaseSettings

PROJECT_COLUMN = {"projects": "uuid", "file_meta_data": "project_id"}  # else project_uuid
KEEP_ROWS = frozenset({"alembic_version"})  # the template keeps only its revision


class StagingError(ProjmigError):
    """The staging database could not be made; the source was only read, nothing else written."""


@dataclass(frozen=True)
class TableShape:
    columns: tuple[str, ...]  # in the table's order, generated columns left out (COPY cannot write them)


@dataclass
class Closure:
    """The rows to stage, per table, as the source's text COPY of them."""

    revision: str
    data: dict[str, bytes] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)  # sequence -> the source's last value


@dataclass
class StagedDatabase:
    """A staging database, at ``path.target`` once its migrations ran."""

    db: DatabaseSettings
    path: MigrationPath
    rows: dict[str, int]  # table -> rows loaded from the source (before the migrations)
    timings: dict[str, float]  # phase -> seconds: read_source, server, template, create, load, migrate, total
    projects: frozenset[str] = frozenset()  # the projects staged (source uuids)
    # project-table columns that held values in the staged rows and are gone at the target revision:
    # "table.column" -> rows that held a value (their data moved elsewhere, or, going down, is lost)
    gone: dict[str, int] = field(default_factory=dict)

    @property
    def source_revision(self) -> str:
        return self.path.source or ""

    @property
    def revision(self) -> str:
        return self.path.target


class StagingServer:
    """The PostgreSQL server where staging databases are made: its admin connection, one template
    database per osparc revision, and the migration subprocess (one per package)."""

    def __init__(
        self, admin: DatabaseSettings, *, owned: object | None = None, workdir: Path | None = None,
        schema_cache: Path | None = None,
    ):
        """``schema_cache``: a directory where each template's schema is kept (``pg_dump``, keyed by
        the package's digest, the revision and PostgreSQL's major version), so that a later run
        restores it (~0.5 s) instead of running osparc's migrations from an empty database (~1.5-3 s
        to 447db39c5455, ~2-7 s to head). None: no cache."""
        self.admin = admin
        self.schema_cache = schema_cache
        self._token = secrets.token_hex(4)
        self._owned = owned  # projmig's own server (a sandbox PostgresServer), stopped by close()
        self._workdir = workdir
        self._templates: dict[tuple[str, str], str] = {}
        self._template_lock = asyncio.Lock()
        self._runners: dict[Path, MigrationRunner] = {}

    @classmethod
    def at(cls, admin: DatabaseSettings, *, schema_cache: Path | None = None) -> StagingServer:
        """The operator's server (``admin`` names a database to connect to, e.g. ``postgres``)."""
        return cls(admin, schema_cache=schema_cache)

    @classmethod
    async def start_local(cls, workdir: Path | None = None, *, schema_cache: Path | None = None) -> StagingServer:
        """A PostgreSQL server of projmig's own, for this run (see the module's docstring)."""
        from .sandbox.servers import PostgresServer  # the sandbox's servers: not needed for an operator's server

        own_dir = workdir is None
        directory = Path(tempfile.mkdtemp(prefix="projmig-staging-")) if own_dir else Path(workdir)  # type: ignore[arg-type]
        password = secrets.token_urlsafe(24)
        server = PostgresServer(directory / "postgres", password=password)
        try:
            await asyncio.to_thread(server.start)
        except BaseException:
            server.stop()
            if own_dir:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        admin = DatabaseSettings(
            host=server.host, port=server.port, user=server.user, password=SecretStr(password), database="postgres",
            ssl="disable",
        )
        return cls(admin, owned=server, workdir=directory if own_dir else None, schema_cache=schema_cache)

    def runner(self, migrations: OsparcMigrations) -> MigrationRunner:
        """The server's migration subprocess for ``migrations`` (started on first use; started
        early by :func:`staging_database`, so that its imports overlap the source's read)."""
        runner = self._runners.get(migrations.package)
        if runner is None:
            runner = self._runners[migrations.package] = migrations.runner(self.admin)
        return runner

    async def create_database(self, name: str, template: str | None = None) -> DatabaseSettings:
        conn = await connect(self.admin)
        try:
            await conn.execute(f'CREATE DATABASE {_quote(name)}' + (f' TEMPLATE {_quote(template)}' if template else ""))
        finally:
            await conn.close()
        return self._settings_for(name)

    async def drop_database(self, name: str) -> None:
        conn = await connect(self.admin)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
        finally:
            await conn.close()

    def _settings_for(self, name: str) -> DatabaseSettings:
        if self.admin.dsn is None:
            return self.admin.model_copy(update={"database": name})
        url = self.admin.url()
        return DatabaseSettings(
            host=url.host, port=url.port or 5432, user=url.username,
            password=SecretStr(url.password) if url.password else None, database=name,
            ssl=self.admin.with_dsn_tls().ssl, ssl_root_cert=self.admin.ssl_root_cert,
            ssl_cert=self.admin.ssl_cert, ssl_key=self.admin.ssl_key, connect_timeout=self.admin.connect_timeout,
        )

    async def template(self, migrations: OsparcMigrations, revision: str) -> tuple[str, float]:
        """The template database at ``revision`` (made on first use): (its name, seconds spent now).
        Made by osparc's migrations, or restored from the schema cache when it holds this package's
        schema at this revision."""
        key = (migrations.digest(), revision)
        async with self._template_lock:
            if key in self._templates:
                return self._templates[key], 0.0
            started = time.monotonic()
            # this server object's own: two runs on one operator's server must not share (or drop) one
            name = f"projmig_tpl_{revision}_{self._token}"
            db = await self.create_database(name)
            try:
                cache = await self._schema_file(key)
                if cache is not None and cache.is_file():
                    await _execute_script(db, cache.read_text())
                else:
                    await self.runner(migrations).migrate(db, revision)
                    await _empty_all_tables(db)
                    if cache is not None:
                        await asyncio.to_thread(_save_schema, db, cache)
            except BaseException:
                await self.drop_database(name)
                raise
            self._templates[key] = name
            return name, time.monotonic() - started

    async def _schema_file(self, key: tuple[str, str]) -> Path | None:
        """Where the schema cache keeps this package's schema at this revision, for this server's
        PostgreSQL major version (None: no cache)."""
        if self.schema_cache is None:
            return None
        conn = await connect(self.admin)
        try:
            major = await conn.fetchval("SELECT current_setting('server_version_num')::int / 10000")
        finally:
            await conn.close()
        return self.schema_cache / key[0] / f"{key[1]}.pg{major}.sql"

    async def close(self) -> None:
        """Stop the migration subprocesses; drop the templates (an operator's server) or stop
        projmig's own server and remove its directory."""
        for runner in self._runners.values():
            await runner.close()
        self._runners.clear()
        if self._owned is None:
            for name in self._templates.values():
                await self.drop_database(name)
        else:
            # immediate shutdown: its data directory is removed next, a checkpoint would be wasted
            await asyncio.to_thread(stop_at_once, self._owned)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
        self._templates.clear()

    async def __aenter__(self) -> StagingServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def stop_at_once(server: object) -> None:
    """Stop a throwaway :class:`~projmig.sandbox.servers.PostgresServer` at once (SIGQUIT: immediate
    shutdown; its data is thrown away, a checkpoint would be wasted: the fast shutdown took ~1.2 s
    here). Its process is gone for us once it is a zombie (an init process may reap only every
    second or so)."""
    pid = getattr(server, "pid", None)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.02)
        if not _running(pid):
            server.pid = None  # type: ignore[attr-defined]
    server.stop()  # type: ignore[attr-defined]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


@asynccontextmanager
async def staging_database(
    source: DatabaseSettings,
    projects: Sequence[str],
    migrations: OsparcMigrations,
    target_revision: str,
    *,
    server: StagingServer | None = None,
) -> AsyncIterator[StagedDatabase]:
    """A staging database holding the closure of ``projects`` (every project to move, hidden
    children included), migrated from the source's revision to ``target_revision``; dropped when
    the block ends. ``server``: where (default: a server of projmig's own, for this block only).

    Raises :class:`UnknownRevisionError` (a revision the package lacks), :class:`StagingError`
    (the source or the staging server is not as needed) and :class:`~projmig.releases.MigrationError`
    (an osparc migration failed on these rows)."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    migrations.revision(target_revision, "destination revision")
    own_server = server is None
    server_start = asyncio.create_task(StagingServer.start_local()) if own_server else None
    name = f"projmig_staging_{secrets.token_hex(6)}"
    staged: DatabaseSettings | None = None
    try:
        if server is not None:
            await server.runner(migrations).start()  # imports while the source is read
        phase = time.monotonic()
        closure = await read_closure(source, projects, migrations, target_revision)
        timings["read_source"] = time.monotonic() - phase
        if server_start is not None:
            phase = time.monotonic()
            server = await server_start
            server_start = None
            await server.runner(migrations).start()
            timings["server"] = time.monotonic() - phase
        assert server is not None
        path = migrations.path(closure.revision, target_revision)
        template, timings["template"] = await server.template(migrations, closure.revision)
        phase = time.monotonic()
        staged = await server.create_database(name, template)
        timings["create"] = time.monotonic() - phase
        phase = time.monotonic()
        await load(staged, closure)
        timings["load"] = time.monotonic() - phase
        phase = time.monotonic()
        held = await column_values(staged) if path.direction != "none" else {}
        if path.direction != "none":
            await server.runner(migrations).run(staged, path)
        gone = {column: n for column, n in held.items() if n and column not in await column_values(staged, count=False)}
        timings["migrate"] = time.monotonic() - phase
        timings["total"] = time.monotonic() - started
        yield StagedDatabase(db=staged, path=path, rows=dict(closure.rows), timings=timings,
                             projects=frozenset(projects), gone=gone)
    finally:
        if server_start is not None:
            # not cancelled: its thread would start PostgreSQL all the same, and nobody would stop it
            try:
                server = await server_start
            except BaseException:  # noqa: BLE001 - it failed, and cleaned up after itself
                server = None
        if server is not None:
            if staged is not None and not own_server:
                await server.drop_database(name)
            if own_server:
                await server.close()


async def column_values(db: DatabaseSettings, *, count: bool = True) -> dict[str, int]:
    """"table.column" -> how many of its rows hold a value (not NULL), for every column of the project
    tables present (``count=False``: the columns only, each 0)."""
    conn = await connect(db)
    try:
        columns: dict[str, list[str]] = {}
        for table, column in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = ANY($1::text[]) ORDER BY table_name, ordinal_position", list(PROJECT_TABLES)
        ):
            columns.setdefault(table, []).append(column)
        found: dict[str, int] = {}
        for table, names in columns.items():
            values = [0] * len(names)
            if count:
                row = await conn.fetchrow(f"SELECT {', '.join(f'count({_quote(c)})' for c in names)} FROM {_quote(table)}")
                values = list(row)  # type: ignore[arg-type]
            found.update({f"{table}.{name}": value for name, value in zip(names, values)})
        return found
    finally:
        await conn.close()


# -- the closure ---------------------------------------------------------------------------------


async def read_closure(
    source: DatabaseSettings, projects: Sequence[str], migrations: OsparcMigrations, target_revision: str,
) -> Closure:
    """The rows to stage (see the module's docstring), read in one snapshot of the source."""
    conn = await connect(source)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
            revision = await conn.fetchval("SELECT version_num FROM public.alembic_version LIMIT 1") if exists else None
            if revision is None:
                raise StagingError(f"source database {source.describe()} has no alembic_version: is it osparc's?")
            if not migrations.knows(revision):
                raise UnknownRevisionError(revision, migrations.package, f"source database {source.describe()} is at revision")
            path = migrations.path(revision, target_revision)
            shapes = await table_shapes(conn)
            foreign_keys = await reflect_foreign_keys(conn)
            later = [fk for fk in path.created_foreign_keys if _applies(fk, shapes)]
            missing = sorted(set(projects) - {r[0] for r in await conn.fetch(
                "SELECT uuid FROM projects WHERE uuid = ANY($1::text[])", list(projects))})
            if missing:
                raise StagingError(f"source project {', '.join(missing)} does not exist")
            selected = await _seed(conn, list(projects), shapes, foreign_keys + later, path)
            await _follow_references(conn, selected, foreign_keys, later)
            closure = Closure(revision=revision)
            for table, ctids in sorted(selected.items()):
                if not ctids:
                    continue
                buffer = io.BytesIO()
                columns = shapes[table].columns
                await conn.copy_from_query(
                    f"SELECT {', '.join(map(_quote, columns))} FROM {_quote(table)} WHERE ctid = ANY($1::tid[])",
                    list(ctids), output=buffer, format="text",
                )
                closure.data[table] = buffer.getvalue()
                closure.rows[table] = len(ctids)
                closure.columns[table] = columns
            for name, value in await conn.fetch(
                "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' AND last_value IS NOT NULL"
            ):
                closure.sequences[name] = value
            return closure
    finally:
        await conn.close()


async def table_shapes(conn: asyncpg.Connection) -> dict[str, TableShape]:
    rows = await conn.fetch("""
        SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        WHERE c.relkind IN ('r', 'p')
        GROUP BY c.relname""")
    return {name: TableShape(tuple(columns)) for name, columns in rows}


async def reflect_foreign_keys(conn: asyncpg.Connection) -> list[ForeignKey]:
    """Every foreign key between tables of the public schema, as the database has them."""
    rows = await conn.fetch("""
        SELECT c.conrelid::regclass::text, c.confrelid::regclass::text,
               array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
               array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
        FROM pg_constraint c
        JOIN pg_namespace n ON n.oid = c.connamespace AND n.nspname = 'public'
        WHERE c.contype = 'f'""")
    return [ForeignKey(_unqualified(t), tuple(cols), _unqualified(r), tuple(rcols)) for t, r, cols, rcols in rows]


def _applies(fk: ForeignKey, shapes: dict[str, TableShape]) -> bool:
    """A foreign key a later migration creates, between columns the source already has."""
    return (fk.table in shapes and fk.referred_table in shapes
            and set(fk.columns) <= set(shapes[fk.table].columns)
            and set(fk.referred_columns) <= set(shapes[fk.referred_table].columns))


async def _seed(
    conn: asyncpg.Connection, projects: list[str], shapes: dict[str, TableShape], foreign_keys: list[ForeignKey],
    path: MigrationPath,
) -> dict[str, set]:
    """The selected projects' own rows: ctids per table."""
    selected: dict[str, set] = {}
    selected["projects"] = {r[0] for r in await conn.fetch(
        "SELECT ctid FROM projects WHERE uuid = ANY($1::text[])", projects)}
    for table in PROJECT_TABLES[1:]:
        column = PROJECT_COLUMN.get(table, "project_uuid")
        if table in shapes and column in shapes[table].columns:
            selected[table] = {r[0] for r in await conn.fetch(
                f"SELECT ctid FROM {_quote(table)} WHERE {_quote(column)} = ANY($1::text[])", projects)}
    # tables a migration on the way drops, that reference projects: their rows may be folded in first
    for fk in foreign_keys:
        if fk.referred_table == "projects" and fk.table in path.dropped_tables and fk.table not in PROJECT_TABLES:
            selected.setdefault(fk.table, set()).update(
                await _referring(conn, fk, selected["projects"]))
    return selected


async def _referring(conn: asyncpg.Connection, fk: ForeignKey, parent_ctids: set) -> set:
    """Rows of ``fk.table`` that reference one of the given rows of ``fk.referred_table``."""
    child = ", ".join(f"c.{_quote(c)}::text" for c in fk.columns)
    parent = ", ".join(f"p.{_quote(c)}::text" for c in fk.referred_columns)
    rows = await conn.fetch(
        f"SELECT c.ctid FROM {_quote(fk.table)} c WHERE ({child}) IN "
        f"(SELECT {parent} FROM {_quote(fk.referred_table)} p WHERE p.ctid = ANY($1::tid[]))",
        list(parent_ctids),
    )
    return {r[0] for r in rows}


async def _follow_references(
    conn: asyncpg.Connection, selected: dict[str, set], foreign_keys: list[ForeignKey], later: list[ForeignKey],
) -> None:
    """Add every row the selected rows reference, recursively (until nothing new is found)."""
    references = [(fk, False) for fk in foreign_keys] + [(fk, True) for fk in later]
    changed = set(selected)
    while changed:
        grown: set[str] = set()
        for fk, as_text in references:
            if fk.table not in changed or not selected.get(fk.table):
                continue
            cast = "::text" if as_text else ""
            parent = ", ".join(f"p.{_quote(c)}{cast}" for c in fk.referred_columns)
            child = ", ".join(f"c.{_quote(c)}{cast}" for c in fk.columns)
            rows = await conn.fetch(
                f"SELECT p.ctid FROM {_quote(fk.referred_table)} p WHERE ({parent}) IN "
                f"(SELECT {child} FROM {_quote(fk.table)} c WHERE c.ctid = ANY($1::tid[]))",
                list(selected[fk.table]),
            )
            have = selected.setdefault(fk.referred_table, set())
            new = {r[0] for r in rows} - have
            if new:
                have.update(new)
                grown.add(fk.referred_table)
        changed = grown


# -- the staging database ------------------------------------------------------------------------


async def _empty_all_tables(db: DatabaseSettings) -> None:
    conn = await connect(db)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        emptied = [t for t in tables if t not in KEEP_ROWS]
        if emptied:
            await conn.execute(f"TRUNCATE {', '.join(map(_quote, emptied))} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


def _save_schema(db: DatabaseSettings, path: Path) -> None:
    """``pg_dump`` of the template (its schema and its one alembic_version row, as INSERTs: a script
    asyncpg can run). Without pg_dump, or with output a script cannot run, there is no cache: the
    next run migrates again."""
    tool = _pg_dump()
    if tool is None:
        return
    url = db.url()
    env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": url.password or "", "PGSSLMODE": db.ssl,
           "PGCONNECT_TIMEOUT": str(max(1, int(db.connect_timeout)))}
    dumped = subprocess.run(
        [tool, "-h", url.host or "", "-p", str(url.port or 5432), "-U", url.username or "", "--no-owner",
         "--no-privileges", "--inserts", url.database or ""],
        capture_output=True, text=True, env=env,
    )
    if dumped.returncode != 0:
        return
    # pg_dump 15.14+ brackets its output in psql's \restrict/\unrestrict; any other meta-command: no cache
    lines = [line for line in dumped.stdout.splitlines() if not line.startswith(("\\restrict ", "\\unrestrict "))]
    if any(line.startswith("\\") for line in lines):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)


def _pg_dump() -> str | None:
    try:
        from .sandbox.servers import find_pg_bindir

        local = find_pg_bindir() / "pg_dump"
        if local.exists():
            return str(local)
    except Exception:  # noqa: BLE001 - no server binaries here: a pg_dump on PATH will do
        pass
    return shutil.which("pg_dump")


async def _execute_script(db: DatabaseSettings, script: str) -> None:
    conn = await connect(db)
    try:
        await conn.execute(script)
    finally:
        await conn.close()


async def load(db: DatabaseSettings, closure: Closure) -> None:
    """COPY the closure into ``db`` (at the closure's revision, its tables empty), triggers and
    foreign-key checks off; then set each sequence to the source's value or the largest id loaded."""
    conn = await connect(db)
    try:
        try:
            await conn.execute("SET session_replication_role = replica")
        except asyncpg.InsufficientPrivilegeError:
            raise StagingError(
                f"staging server {db.describe()}: its user may not set session_replication_role (a superuser, or "
                "rds_superuser, is needed to load rows without firing osparc's triggers)"
            ) from None
        shapes = await table_shapes(conn)
        async with conn.transaction():
            for table, data in closure.data.items():
                columns = closure.columns[table]
                if table not in shapes or shapes[table].columns != columns:
                    theirs = shapes[table].columns if table in shapes else ()
                    differ = sorted(set(columns) ^ set(theirs)) or ["column order"]
                    raise StagingError(
                        f"source table {table} differs from osparc's schema at revision {closure.revision} "
                        f"({', '.join(differ)}): the source is not as its alembic_version says"
                    )
                await conn.copy_to_table(table, source=io.BytesIO(data), columns=list(columns), format="text")
            for sequence, table, column in await conn.fetch("""
                    SELECT s.relname, t.relname, a.attname
                    FROM pg_class s
                    JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')
                    JOIN pg_class t ON t.oid = d.refobjid
                    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
                    WHERE s.relkind = 'S'"""):
                largest = await conn.fetchval(f"SELECT max({_quote(column)}) FROM {_quote(table)}")
                value = max(closure.sequences.get(sequence, 0), largest or 0)
                if value > 0:
                    await conn.execute("SELECT setval($1::regclass, $2)", _quote(sequence), value)
    finally:
        await conn.close()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _unqualified(name: str) -> str:
    return name.split(".", 1)[-1].strip('"')
