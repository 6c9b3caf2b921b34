"""osparc-simcore's own database migrations, from the operator's checkout: what lies between two
revisions, and running them on a database.

The operator names the directory of osparc-simcore's ``packages/postgres-database`` (its sibling
``packages/common-library`` is imported by its models). :meth:`OsparcMigrations.at` checks it and reads
the revision graph *statically* (``ast`` of ``migration/versions/*.py``): knowing the revisions, the
path between two of them and which steps name the project tables runs none of the operator's code in
projmig's process. Running the migrations does: in a subprocess (:mod:`projmig.osparc_alembic`) of
this Python, with the package's and common-library's sources on ``PYTHONPATH``, the way osparc's
``sc-pg upgrade`` does (its ``env.py``, one transaction around every step). The password reaches
libpq through ``PGPASSWORD`` only, never an argument, an error or a log line.

>>> osparc = OsparcMigrations.at(Path("osparc-simcore/packages/postgres-database"))
>>> path = osparc.path("447db39c5455", osparc.head)
>>> path.direction, len(path.steps), [r.id for r, _ in path.touching]
>>> await osparc.migrate(staging_db, osparc.head)
"""

from __future__ import annotations

import ast
import asyncio
import collections
import functools
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg

from . import osparc_alembic
from .db import tls_argument
from .errors import ConfigError, ProjmigError
from .schema import PROJECT_TABLES
from .settings import DatabaseSettings

PACKAGE_SOURCES = Path("src") / "simcore_postgres_database"
MIGRATION_DIR = PACKAGE_SOURCES / "migration"
COMMON_LIBRARY_SOURCES = Path("src") / "common_library"
# what the subprocess may import that projmig itself does not need (pyproject's `releases` extra)
RELEASES_EXTRA = "pip install 'projmig[releases]'"
# one error line quotes at most this much of what a migration said
MESSAGE_LIMIT = 600
PROJECT_IN_MESSAGE = re.compile(r"\bProject ([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})")

Direction = Literal["upgrade", "downgrade", "none"]


class MigrationError(ProjmigError):
    """An osparc migration failed on a database. osparc's ``env.py`` runs every step in one
    transaction, so the database keeps the revision it had."""

    def __init__(self, message: str, *, revision: str | None = None, projects: Iterable[str] = ()):
        super().__init__(message)
        self.revision = revision
        self.projects = list(projects)


class UnknownRevisionError(ConfigError):
    """A revision that the given osparc package does not have (a deployment newer than the checkout,
    or a typo)."""

    def __init__(self, revision: str, package: Path, role: str = "revision"):
        super().__init__(
            f"{role} {revision} is not a revision of the osparc migrations in {package} "
            "(is that checkout older than the deployment?)"
        )
        self.revision = revision


@dataclass(frozen=True)
class ForeignKey:
    """A reference between two tables' columns (as reflected, or as a migration creates it)."""

    table: str
    columns: tuple[str, ...]
    referred_table: str
    referred_columns: tuple[str, ...]


@dataclass(frozen=True)
class ScriptFacts:
    """What one direction (``upgrade()`` or ``downgrade()``) of a revision script names, read from its
    text and the module-level helpers and constants it uses."""

    tables: frozenset[str] = frozenset()  # project tables it names
    dropped_tables: frozenset[str] = frozenset()  # op.drop_table(...)
    foreign_keys: tuple[ForeignKey, ...] = ()  # op.create_foreign_key(...) and ALTER TABLE ... FOREIGN KEY


@dataclass(frozen=True)
class Revision:
    id: str
    down: tuple[str, ...]  # its parents (two or more: a merge); () for the first revision
    doc: str  # the first line of its docstring
    path: Path

    def facts(self, direction: Direction) -> ScriptFacts:
        """What its ``upgrade()`` (or ``downgrade()``) names; parsed on first use."""
        return script_facts(self.path, "downgrade" if direction == "downgrade" else "upgrade")

    def describe(self) -> str:
        return f'{self.id} ("{self.doc}")' if self.doc else self.id


@dataclass(frozen=True)
class MigrationPath:
    """The steps from ``source`` to ``target``, in the order they run: for an upgrade each
    revision's ``upgrade()``, for a downgrade each revision's ``downgrade()`` (from ``source``
    down to, not including, ``target``)."""

    source: str | None  # None: an empty database
    target: str
    direction: Direction
    steps: tuple[Revision, ...]

    @property
    def touching(self) -> list[tuple[Revision, frozenset[str]]]:
        """The steps whose script names a project table (:data:`projmig.schema.PROJECT_TABLES`),
        each with those tables."""
        return [(r, r.facts(self.direction).tables) for r in self.steps if r.facts(self.direction).tables]

    @property
    def dropped_tables(self) -> frozenset[str]:
        return frozenset().union(*(r.facts(self.direction).dropped_tables for r in self.steps))

    @property
    def created_foreign_keys(self) -> tuple[ForeignKey, ...]:
        return tuple(fk for r in self.steps for fk in r.facts(self.direction).foreign_keys)

    def describe(self) -> str:
        """One line for ``projmig plan``."""
        if self.direction == "none":
            return f"{self.target}: same revision, no osparc migration to run"
        touching = self.touching
        named = "; ".join(f"{r.describe()}: {', '.join(sorted(tables))}" for r, tables in touching)
        return (
            f"{self.direction} {self.source or 'empty'} -> {self.target}: {len(self.steps)} osparc migrations, "
            f"{len(touching)} of them on project tables" + (f" ({named})" if named else "")
        )


@dataclass(frozen=True)
class MigrationRun:
    """What one run of the migrations did."""

    path: MigrationPath
    seconds: float  # wall time, the subprocess's start included
    steps_run: tuple[str, ...]  # alembic's description of each step, as it logged them


class OsparcMigrations:
    """osparc-simcore's ``packages/postgres-database`` at a directory: its revisions, and running them."""

    def __init__(self, package: Path, common_library: Path, revisions: dict[str, Revision]):
        self.package = package
        self.common_library = common_library
        self.revisions = revisions
        self._children: dict[str, list[str]] = {}
        for rev in revisions.values():
            for parent in rev.down:
                self._children.setdefault(parent, []).append(rev.id)

    # -- reading the package --------------------------------------------------------------------

    @classmethod
    def at(cls, path: Path | str, *, what: str = "schema_migrations") -> OsparcMigrations:
        """Check the directory and read its revision graph; one :class:`ConfigError` line naming
        what is wrong (``what`` names the setting the directory came from)."""
        package = Path(path).expanduser()
        if not package.is_dir():
            raise ConfigError(f"{what}: {package} is not a directory (osparc-simcore's packages/postgres-database)")
        package = package.resolve()
        versions = package / MIGRATION_DIR / "versions"
        if not (package / MIGRATION_DIR / "env.py").is_file() or not versions.is_dir():
            hint = ""
            if (package / "packages" / "postgres-database").is_dir():
                hint = f"; did you mean {package / 'packages' / 'postgres-database'}?"
            raise ConfigError(
                f"{what}: {package} is not osparc-simcore's packages/postgres-database "
                f"(no {MIGRATION_DIR}/env.py and versions/){hint}"
            )
        common = package.parent / "common-library"
        if not (common / COMMON_LIBRARY_SOURCES / "__init__.py").is_file():
            raise ConfigError(
                f"{what}: common-library not found next to {package} (expected {common / COMMON_LIBRARY_SOURCES}; "
                "osparc's models import it): give the postgres-database directory of a whole osparc-simcore checkout"
            )
        revisions: dict[str, Revision] = {}
        for script in sorted(versions.glob("*.py")):
            try:
                rev = read_revision(script)
            except (SyntaxError, ValueError) as exc:
                raise ConfigError(f"{what}: cannot read the migration {script.name}: {exc}") from None
            if rev is None:
                continue
            if rev.id in revisions:
                raise ConfigError(f"{what}: revision {rev.id} is defined twice ({revisions[rev.id].path.name}, {script.name})")
            revisions[rev.id] = rev
        if not revisions:
            raise ConfigError(f"{what}: {versions} holds no alembic revision")
        missing = sorted({p for r in revisions.values() for p in r.down if p not in revisions})
        if missing:
            raise ConfigError(f"{what}: revisions refer to revisions that are not there: {', '.join(missing)}")
        migrations = cls(package, common, revisions)
        if len(migrations.heads) != 1:
            raise ConfigError(f"{what}: {package} has {len(migrations.heads)} heads ({', '.join(migrations.heads)}), not one")
        return migrations

    @property
    def heads(self) -> list[str]:
        return sorted(r for r in self.revisions if r not in self._children)

    @property
    def head(self) -> str:
        return self.heads[0]

    def knows(self, revision: str) -> bool:
        return revision in self.revisions

    def revision(self, revision: str, role: str = "revision") -> Revision:
        try:
            return self.revisions[revision]
        except KeyError:
            raise UnknownRevisionError(revision, self.package, role) from None

    def version(self, package_dir: Path) -> str:
        version_file = package_dir / "VERSION"
        return version_file.read_text().strip() if version_file.is_file() else "0"

    @functools.cached_property
    def _digest(self) -> str:
        sha = hashlib.sha256()
        for script in sorted((self.package / MIGRATION_DIR).rglob("*.py")):
            sha.update(str(script.relative_to(self.package)).encode() + b"\0" + script.read_bytes() + b"\0")
        sha.update(self.version(self.package).encode() + b"\0" + self.version(self.common_library).encode())
        return sha.hexdigest()[:16]

    def digest(self) -> str:
        """A digest of what the migrations are (every script under ``migration/``, and the package
        and common-library versions): what a cache of a revision's schema is keyed by."""
        return self._digest

    def ancestors(self, revision: str) -> set[str]:
        """``revision`` and every revision before it."""
        seen: set[str] = set()
        stack = [revision]
        while stack:
            rev = stack.pop()
            if rev not in seen:
                seen.add(rev)
                stack.extend(self.revisions[rev].down)
        return seen

    def path(self, source: str | None, target: str) -> MigrationPath:
        """The steps from ``source`` (None: an empty database) to ``target``. Raises
        :class:`UnknownRevisionError` for a revision the package lacks, :class:`ConfigError` when
        neither lies before the other (branches)."""
        self.revision(target, "target revision")
        if source is not None:
            self.revision(source, "source revision")
        if source == target:
            return MigrationPath(source, target, "none", ())
        before_target = self.ancestors(target)
        before_source = self.ancestors(source) if source is not None else set()
        if source is None or source in before_target:
            return MigrationPath(source, target, "upgrade", self._ordered(before_target - before_source))
        if target in before_source:
            return MigrationPath(source, target, "downgrade", tuple(reversed(self._ordered(before_source - before_target))))
        raise ConfigError(f"revisions {source} and {target} are on different branches of the osparc migrations")

    def _ordered(self, revisions: set[str]) -> tuple[Revision, ...]:
        """Parents before children (Kahn's algorithm, ties by id: the order is the same every time)."""
        waiting = {r: sum(1 for p in self.revisions[r].down if p in revisions) for r in revisions}
        ready = sorted(r for r, n in waiting.items() if n == 0)
        ordered: list[Revision] = []
        while ready:
            rev = ready.pop(0)
            ordered.append(self.revisions[rev])
            for child in sorted(self._children.get(rev, ())):
                if child in waiting:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)
            ready.sort()
        return tuple(ordered)

    # -- running them ---------------------------------------------------------------------------

    def runner(self, server: DatabaseSettings) -> MigrationRunner:
        """A migration subprocess for databases of ``server`` (its host, port, user and password):
        started by ``async with`` (or :meth:`MigrationRunner.start`), it imports while the caller
        prepares the database, and serves every migration of those databases until closed."""
        return MigrationRunner(self, server)

    async def migrate(self, db: DatabaseSettings, target: str, *, timeout: float = 1800.0) -> MigrationRun:
        """Upgrade or downgrade the database from its revision (none: empty) to ``target``, in a
        subprocess of its own."""
        async with self.runner(db) as runner:
            return await runner.migrate(db, target, timeout=timeout)

    async def upgrade(self, db: DatabaseSettings, target: str, *, timeout: float = 1800.0) -> MigrationRun:
        async with self.runner(db) as runner:
            return await runner.migrate(db, target, timeout=timeout, direction="upgrade")

    async def downgrade(self, db: DatabaseSettings, target: str, *, timeout: float = 1800.0) -> MigrationRun:
        async with self.runner(db) as runner:
            return await runner.migrate(db, target, timeout=timeout, direction="downgrade")


class MigrationRunner:
    """One subprocess running osparc's migrations (:mod:`projmig.osparc_alembic`) for the databases
    of one server and user. Python, alembic, SQLAlchemy and osparc's models take ~1 s to import here,
    more than most migrations take to run: the process starts at once and imports while the caller
    does other work, and then serves each migration asked of it, one at a time."""

    def __init__(self, migrations: OsparcMigrations, server: DatabaseSettings):
        self.migrations = migrations
        self.server = server.with_dsn_tls()
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._drain: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.preload_seconds: float | None = None  # the subprocess's imports, as it measured them

    async def start(self) -> MigrationRunner:
        if self._process is None or self._process.returncode is not None:
            self._process = await asyncio.create_subprocess_exec(
                # -P: the script's own directory (projmig/) stays off sys.path
                sys.executable, "-P", osparc_alembic.__file__,
                env=child_environment(self.migrations, self.server), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                limit=1 << 20,
            )
            self._drain = asyncio.create_task(self._drain_stderr(self._process))
        return self

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                pass
        await _stop(process)
        if self._drain is not None:
            await self._drain

    async def __aenter__(self) -> MigrationRunner:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def migrate(
        self, db: DatabaseSettings, target: str, *, timeout: float = 1800.0, direction: Direction | None = None,
    ) -> MigrationRun:
        """Bring ``db`` (a database of this runner's server) from its revision to ``target``;
        ``direction``: refuse the other one."""
        path = self.migrations.path(await current_revision(db, self.migrations), target)
        if direction is not None and path.direction not in (direction, "none"):
            raise ConfigError(
                f"{direction} to {target}: {db.describe()} is at {path.source or 'no revision'} "
                f"({path.direction} needed)"
            )
        if path.direction == "none":
            return MigrationRun(path, 0.0, ())
        return await self.run(db, path, timeout=timeout)

    async def run(self, db: DatabaseSettings, path: MigrationPath, *, timeout: float = 1800.0) -> MigrationRun:
        """Run ``path`` on ``db`` (which must be at ``path.source``)."""
        db = db.with_dsn_tls()
        mine, theirs = self.server.url(), db.url()
        if (mine.host, mine.port, mine.username, mine.password) != (theirs.host, theirs.port, theirs.username, theirs.password):
            raise ValueError(f"{db.describe()} is not on this runner's server {self.server.describe()}")
        request = {
            "command": "upgrade" if path.direction == "upgrade" else "downgrade",
            "revision": path.target,
            "url": theirs.set(drivername="postgresql+psycopg2", password=None).render_as_string(hide_password=False),
        }
        async with self._lock:
            started = time.monotonic()
            await self.start()
            process = self._process
            assert process is not None and process.stdin is not None and process.stdout is not None
            try:
                async with asyncio.timeout(timeout):
                    process.stdin.write((json.dumps(request) + "\n").encode())
                    await process.stdin.drain()
                    result = await _next_result(process.stdout)
            except TimeoutError:
                await self.close()
                raise MigrationError(
                    f"osparc migrations {path.source or 'empty'} -> {path.target} on {db.describe()} did not finish "
                    f"within {timeout:.0f} s (stopped; the database keeps its revision)"
                ) from None
            except (BrokenPipeError, ConnectionResetError):
                result = None
            except BaseException:  # cancelled: the migration must not go on without us
                await self.close()
                raise
            if result is None:
                await self.close()
                detail = _scrub(list(self._stderr)[-1:] or ["no output"], mine.password)[0]
                raise MigrationError(
                    f"osparc migrations {path.source or 'empty'} -> {path.target} on {db.describe()}: the migration "
                    f"process ended ({detail[:MESSAGE_LIMIT]})"
                )
        self.preload_seconds = result.get("preload_seconds")
        if not result["ok"]:
            raise self._failure(db, path, result, mine.password)
        return MigrationRun(path, time.monotonic() - started, tuple(result.get("steps", ())))

    async def _drain_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    def _failure(self, db: DatabaseSettings, path: MigrationPath, result: dict, password: str | None) -> MigrationError:
        message = _scrub([_first_part(result.get("error") or "")], password)[0]
        revision = result.get("revision")
        error_type = result.get("error_type") or "Error"
        if revision is None:
            hint = f" (projmig's environment lacks it: {RELEASES_EXTRA})" if error_type == "ModuleNotFoundError" else ""
            return MigrationError(f"osparc migrations could not start on {db.describe()}: {error_type}: {message}{hint}")
        projects = list(dict.fromkeys(PROJECT_IN_MESSAGE.findall(message)))
        rev = self.migrations.revisions.get(revision)
        named = rev.describe() if rev else revision
        on = f" on project {', '.join(projects)}" if projects else ""
        return MigrationError(
            f"osparc migration {named} ({path.direction}) failed{on} in {db.describe()}: {error_type}: {message}; "
            f"the database stays at {path.source or 'no revision'}",
            revision=revision, projects=projects,
        )


async def current_revision(db: DatabaseSettings, migrations: OsparcMigrations | None = None) -> str | None:
    """The database's alembic revision (None: no alembic_version table or row). With ``migrations``,
    a revision the package lacks is an :class:`UnknownRevisionError`."""
    conn = await connect(db)
    try:
        exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        revision = await conn.fetchval("SELECT version_num FROM public.alembic_version LIMIT 1") if exists else None
    finally:
        await conn.close()
    if revision is not None and migrations is not None and not migrations.knows(revision):
        raise UnknownRevisionError(revision, migrations.package, f"database {db.describe()} is at revision")
    return revision


async def connect(db: DatabaseSettings) -> asyncpg.Connection:
    """A plain asyncpg connection (TLS as the settings say)."""
    db = db.with_dsn_tls()
    url = db.url()
    return await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database,
        timeout=db.connect_timeout, ssl=tls_argument(db), statement_cache_size=0,
        server_settings={"application_name": "projmig"},
    )


def child_environment(migrations: OsparcMigrations, server: DatabaseSettings) -> dict[str, str]:
    """The subprocess's whole environment: only what Python, libpq and the request need; nothing else
    of projmig's environment (which may hold other credentials) reaches the operator's code. The
    password is libpq's ``PGPASSWORD``."""
    url = server.url()
    keep = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PYTHONPATH"] = os.pathsep.join([str(migrations.package / "src"), str(migrations.common_library / "src")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the operator's checkout may be read-only; and stays as it is
    if url.password:
        env["PGPASSWORD"] = url.password
    env["PGAPPNAME"] = "projmig-osparc-migrations"
    env["PGCONNECT_TIMEOUT"] = str(max(1, int(server.connect_timeout)))
    env["PGSSLMODE"] = server.ssl
    for field_name, variable in (("ssl_root_cert", "PGSSLROOTCERT"), ("ssl_cert", "PGSSLCERT"), ("ssl_key", "PGSSLKEY")):
        if getattr(server, field_name):
            env[variable] = getattr(server, field_name)
    env[osparc_alembic.REQUEST_ENV] = json.dumps({
        "script_location": str(migrations.package / MIGRATION_DIR),
        "versions": {
            "simcore-postgres-database": migrations.version(migrations.package),
            "simcore-common-library": migrations.version(migrations.common_library),
        },
    })
    return env


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


async def _next_result(stdout: asyncio.StreamReader) -> dict | None:
    """The subprocess's next result line (what a migration prints itself is passed over); None at EOF."""
    while True:
        line = await stdout.readline()
        if not line:
            return None
        text = line.decode(errors="replace")
        if text.startswith(osparc_alembic.RESULT_MARK):
            return json.loads(text[len(osparc_alembic.RESULT_MARK):])


def _first_part(message: str) -> str:
    """What a migration's error says, on one line: SQLAlchemy's statement, parameters and link (row
    contents, noise) left out."""
    message = message.split("\n[SQL:", 1)[0].split("\n(Background on this error", 1)[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = "".join(line if i == 0 else (" " if lines[i - 1].endswith(":") else "; ") + line
                   for i, line in enumerate(lines))
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _scrub(lines: list[str], password: str | None) -> list[str]:
    if not password:
        return lines
    return [line.replace(password, "***") for line in lines]


# -- reading a revision script without running it ------------------------------------------------

_FK_SQL = re.compile(
    r"ALTER\s+TABLE\s+(?:ONLY\s+)?\"?(\w+)\"?\s+ADD\s+CONSTRAINT\s+\"?\w+\"?\s+FOREIGN\s+KEY\s*\(([^)]*)\)\s*"
    r"REFERENCES\s+\"?(\w+)\"?\s*\(([^)]*)\)",
    re.IGNORECASE,
)


_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*(?:#.*)?$", re.MULTILINE)
_DOCSTRING = re.compile(r'\A\s*(?:[rRuU]?"""|[rRuU]?\'\'\')\s*([^\n]*)')


def read_revision(script: Path) -> Revision | None:
    """The revision a script defines (None: not a revision script). Its two assignments are read as
    literals, not run; the whole script is parsed only when its facts are asked for (273 scripts
    parse in ~1 s, their assignments read in ~0.05 s)."""
    text = script.read_text()
    try:
        values = {name: ast.literal_eval(value) for name, value in _ASSIGNMENT.findall(text)}
    except (SyntaxError, ValueError):  # e.g. a merge's tuple over several lines: parse the script
        values = {
            target.id: ast.literal_eval(node.value)
            for node in ast.parse(text, str(script)).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name) and target.id in ("revision", "down_revision")
        }
    if not isinstance(values.get("revision"), str):
        return None
    down = values.get("down_revision")
    parents = () if down is None else (down,) if isinstance(down, str) else tuple(down)
    doc = _DOCSTRING.match(text)
    return Revision(id=values["revision"], down=parents, doc=doc.group(1).strip().rstrip('"') if doc else "", path=script)


@functools.cache
def script_facts(script: Path, function: str) -> ScriptFacts:
    tree = ast.parse(script.read_text(), str(script))
    definitions: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            definitions[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    definitions[target.id] = node
    return _facts(definitions, function)


def _facts(definitions: dict[str, ast.AST], function: str) -> ScriptFacts:
    """What ``function`` and every module-level name it reaches (helpers, SQL constants) say."""
    if function not in definitions:
        return ScriptFacts()
    strings: list[str] = []
    calls: list[ast.Call] = []
    seen: set[str] = set()
    pending = [function]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        node = definitions[name]
        docstrings = {id(n.body[0].value) for n in ast.walk(node)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in docstrings:
                strings.append(sub.value)
            elif isinstance(sub, ast.Name) and sub.id in definitions and sub.id not in seen:
                pending.append(sub.id)
            elif isinstance(sub, ast.Call):
                calls.append(sub)
    tables = frozenset(t for t in PROJECT_TABLES if any(_names_table(s, t) for s in strings))
    dropped = frozenset(
        value for call in calls if _op_call(call) == "drop_table"
        for value in [_argument(call, 0, "table_name")] if isinstance(value, str)
    )
    fks: list[ForeignKey] = []
    for call in calls:
        if _op_call(call) == "create_foreign_key":
            parts = [_argument(call, i, kw) for i, kw in enumerate(
                ("constraint_name", "source_table", "referent_table", "local_cols", "remote_cols"))]
            _, table, referred, columns, referred_columns = parts
            if isinstance(table, str) and isinstance(referred, str) and isinstance(columns, list) \
                    and isinstance(referred_columns, list):
                fks.append(ForeignKey(table, tuple(columns), referred, tuple(referred_columns)))
    for text in strings:
        for table, columns, referred, referred_columns in _FK_SQL.findall(text):
            fks.append(ForeignKey(table, _column_list(columns), referred, _column_list(referred_columns)))
    return ScriptFacts(tables=tables, dropped_tables=dropped, foreign_keys=tuple(fks))


def _names_table(text: str, table: str) -> bool:
    if text == table:
        return True
    # in SQL: the name alone (projects, not projects_nodes), maybe quoted or schema-qualified
    return re.search(rf'(?<![\w"]){re.escape(table)}(?![\w"])|"{re.escape(table)}"', text) is not None


def _op_call(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "op":
        return func.attr
    return None


def _argument(call: ast.Call, position: int, keyword: str) -> object:
    node: ast.AST | None = call.args[position] if len(call.args) > position else next(
        (k.value for k in call.keywords if k.arg == keyword), None)
    if node is None:
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "f" and node.args:
        node = node.args[0]  # op.f("name")
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _column_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip('"') for part in text.split(",") if part.strip())
