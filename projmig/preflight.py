"""Checks before any byte moves. Reads both sides, writes nothing (the S3 probes of
:mod:`projmig.probes`: a multipart upload with small parts, aborted at once, proves the destination
accepts writes and shows its ETags; no object appears), and either returns what the migration needs
to know or raises one :class:`PreflightError` listing every problem found, each naming what to fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import alembic_revision, open_engine
from .drift import check_drift
from .errors import ConfigError, PreflightError
from .plan import DestinationFacts
from .probes import VerificationProbe, check_bucket, probe_key, probe_verification
from .s3 import Retrier
from .schema import ColumnDiff
from .selection import Selection, creation_dates, select_projects
from .choices import UuidPolicy
from .graph import SourceState, source_states
from .people import Match, match_people, people
from .releases import MigrationError, MigrationPath, OsparcMigrations
from .run import MigrationRun
from .settings import DatabaseSettings, MigrationSettings, S3Settings
from .staging import StagingError


class ReleaseCrossing(BaseModel):
    """How the projects' rows get from the source's osparc revision to the destination's: osparc's own
    migrations (:mod:`projmig.releases`) on a staging database of just those rows (:mod:`projmig.staging`)."""

    package: str  # osparc-simcore's packages/postgres-database
    path: str  # the path in one line: direction, revisions, how many migrations, those on project tables
    direction: str
    migrations: int
    touching: list[str] = Field(default_factory=list)  # 'rev ("doc"): tables' of each on project tables
    dropped_tables: list[str] = Field(default_factory=list)
    staged_rows: dict[str, int] = Field(default_factory=dict)  # table -> rows staged (at the source's revision)
    gone: dict[str, int] = Field(default_factory=dict)  # "table.column" with values, not at the destination's revision
    seconds: dict[str, float] = Field(default_factory=dict)  # the staging's phases

    def lines(self) -> list[str]:
        """What ``projmig plan`` says of it."""
        lines = [f"across osparc releases: {self.path}", f"  osparc's migrations from {self.package}"]
        if self.staged_rows:
            rows = ", ".join(f"{t} {n}" for t, n in self.staged_rows.items() if n)
            took = self.seconds.get("total")
            lines.append(f"  staged rows: {rows}" + (f" (staging {took:.1f} s)" if took is not None else ""))
        what = "dropped by the downgrade" if self.direction == "downgrade" else "not at the destination's revision"
        lines += [f"  {what}: {column} ({n} rows held a value)" for column, n in self.gone.items()]
        lines += [f"  table {table}: not at the destination's revision" for table in self.dropped_tables]
        return lines


class PreflightReport(BaseModel):
    matches: list[Match] = Field(default_factory=list)  # each source owner's destination account (choices.match_users)
    source_revision: str | None
    destination_revision: str | None
    release: ReleaseCrossing | None = None  # the source and destination run different osparc releases
    # across releases: each source project's state, read before the staging read its rows (what the
    # insert reads again before COMMIT); else the graph reads them with the rows
    source_states: dict[str, SourceState] = Field(default_factory=dict)
    selection: Selection  # the projects and their destination ids (projmig/selection.py)
    already_migrated: list[str] = Field(default_factory=list)  # in the destination from an earlier run
    facts: DestinationFacts
    products: dict[str, int | None] = Field(default_factory=dict)  # destination product -> its group
    schema_drift: list[dict[str, Any]] = Field(default_factory=list)
    drift_notes: list[str] = Field(default_factory=list)  # each column dropped or defaulted, in words
    verification: VerificationProbe = Field(default_factory=VerificationProbe)

    @property
    def resume(self) -> bool:
        return bool(self.already_migrated)

    @property
    def probe_key(self) -> str:
        """The destination key of the write probe (:func:`projmig.probes.probe_key`)."""
        return probe_key(self.selection.roots)


Selected = Callable[[Selection, dict[str, SourceState]], None]


async def run_preflight(
    run: MigrationRun, *, probe_write: bool = True, probe_now: bool = True, owner: bool = True, stage: bool = True,
    on_selected: Selected | None = None,
) -> PreflightReport:
    """The checks of ``run`` (its settings; its locks: once the destination projects are known, and
    before they are looked for in the destination, they are locked, waiting for another run of them:
    :mod:`projmig.locks`). ``owner``: the destination owner is needed (``cleanup`` looks for uploads,
    whoever would own them). ``stage``: across osparc releases, the projects' rows are staged now
    (the run keeps them) and the checks that need them run; else those are left to a later preflight.
    ``probe_write``: a run that will write (every owner must match; the write probe); ``probe_now=False``
    leaves the write probe to the caller (:func:`write_probe`, while it reads the graph).
    ``on_selected(selection, states)``: called once the projects are known and their rows readable
    (and no problem found so far), before the longer checks: the caller may read the graph meanwhile
    (read-only; the checks' verdict still comes first)."""
    settings, session = run.settings, run.transfers.session
    quick = Retrier(attempts=2, timeout=20, initial_wait=0.5, max_wait=2)
    async with AsyncExitStack() as stack:
        engines: dict[str, AsyncEngine] = {}

        async def reach_database(role: str, db: DatabaseSettings) -> list[str]:
            try:
                engines[role] = await stack.enter_async_context(open_engine(db, role))
            except PreflightError as exc:
                return exc.problems
            return []

        async def reach_bucket(role: str, s3: S3Settings) -> list[str]:
            return (await check_bucket(role, s3, quick, listing=True, write_probe_key=None, session=session)).problems

        # the four servers at once; their problems in a fixed order (databases, then buckets)
        reached = await asyncio.gather(
            reach_database("source", settings.source.db), reach_database("destination", settings.destination.db),
            reach_bucket("source", settings.source.s3), reach_bucket("destination", settings.destination.s3),
            return_exceptions=True,
        )
        for outcome in reached:
            if isinstance(outcome, BaseException):
                raise outcome
        problems: list[str] = [line for found in reached for line in found]  # type: ignore[union-attr]
        if problems:
            raise PreflightError(problems)

        try:
            async with engines["source"].connect() as src, engines["destination"].connect() as dst:
                try:
                    report = await _check_databases(run, src, dst, problems, owner, stage, probe_write, on_selected)
                except Exception as exc:
                    if not _connection_lost(exc):
                        raise
                    lost = [r for r, c in (("source", src), ("destination", dst)) if c.invalidated]
                    raise _lost(settings, lost, exc) from exc
        except Exception as exc:
            if isinstance(exc, PreflightError) or not _connection_lost(exc):
                raise
            raise _lost(settings, [], exc) from exc
        if problems:
            raise PreflightError(problems)
        if probe_write and probe_now:
            await write_probe(run, report)
        return report


async def write_probe(run: MigrationRun, report: PreflightReport) -> None:
    """The preflight's only write, once every other check has passed: the destination's probe upload
    (aborted: no object appears) and the verification it chooses (``report.verification``). From
    here on the calls move bytes: retried like every S3 call of the migration."""
    problems: list[str] = []
    settings = run.settings
    report.verification = await probe_verification(
        settings, report.selection.roots, Retrier.of(settings.options), problems, run.transfers.session, run.source.data
    )
    if problems:
        raise PreflightError(problems)


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, TimeoutError)) or isinstance(exc, DBAPIError) and exc.connection_invalidated


def _lost(settings: MigrationSettings, roles: list[str], exc: BaseException) -> PreflightError:
    """A database connection lost during the checks: one line per database, not a traceback."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    detail = (str(cause).splitlines() or [type(cause).__name__])[0]
    return PreflightError([
        f"{role} database {getattr(settings, role).db.describe()}: connection lost during the checks ({detail}); "
        "nothing was written" for role in roles or ["source", "destination"]
    ])


async def _check_databases(
    run: MigrationRun, src: AsyncConnection, dst: AsyncConnection, problems: list[str], owner: bool, stage: bool,
    probe_write: bool, on_selected: Selected | None = None,
) -> PreflightReport:
    settings = run.settings
    src_rev, dst_rev = await alembic_revision(src), await alembic_revision(dst)
    drift: list[ColumnDiff] = []
    drift_notes: list[str] = []
    crossing: tuple[OsparcMigrations, MigrationPath] | None = None
    if src_rev is None or dst_rev is None:
        missing = [r for r, v in (("source", src_rev), ("destination", dst_rev)) if v is None]
        problems.append(f"{' and '.join(missing)} database has no alembic_version: is it an osparc-simcore database?")
    elif src_rev != dst_rev:
        if settings.host.schema_migrations is not None:
            crossing = release_path(settings.host.schema_migrations, src_rev, dst_rev, problems)
        elif not settings.options.allow_schema_drift:
            problems.append(
                f"schema revision mismatch: source is at {src_rev}, destination at {dst_rev} (set "
                "host.schema_migrations to osparc-simcore's packages/postgres-database to migrate across the releases "
                "with osparc's own migrations, or set options.allow_schema_drift to migrate where the columns allow it)"
            )

    # what to move, and under which ids; across deployments, into whose accounts
    selection = await select_projects(settings, src, dst, problems)
    matches: dict[int, Match] = {}
    if settings.choices.matches_users and selection.roots:
        # (a plan, a dry run, a verify list who matches no one; a migration refuses, unless told to skip them)
        selection, matches = await _match_owners(settings, src, dst, selection, problems, strict=probe_write)
    projects = selection.projects

    # where the projects' rows are read: the source, or across releases their staging (at the
    # destination's revision, what osparc's migrations make of them)
    rows: AsyncConnection | None = src
    release: ReleaseCrossing | None = None
    states: dict[str, SourceState] = {}
    staging = AsyncExitStack()
    if crossing is not None:
        migrations, path = crossing
        release = ReleaseCrossing(
            package=str(migrations.package), path=path.describe(), direction=path.direction, migrations=len(path.steps),
            touching=[f"{r.describe()}: {', '.join(sorted(t))}" for r, t in path.touching],
            dropped_tables=sorted(path.dropped_tables),
        )
        rows = None
        if stage and projects and not problems:
            # read before the staging reads the rows: a change after this is seen before COMMIT
            states = await source_states(src, projects)
            try:
                staged = await run.stage(projects, migrations, path.target)
            except (MigrationError, StagingError) as exc:
                raise PreflightError(str(exc)) from None
            release.staged_rows, release.gone, release.seconds = staged.rows, staged.gone, staged.timings
            engine = await staging.enter_async_context(open_engine(staged.db, "staging"))
            rows = await staging.enter_async_context(engine.connect())
    if on_selected is not None and rows is not None and projects and not problems:
        on_selected(selection, states)

    try:
        comparable = src_rev == dst_rev or release is not None or settings.options.allow_schema_drift
        if rows is not None and projects and src_rev is not None and dst_rev is not None and comparable:
            # every table a project touches, column by column, even at one revision (a destination
            # altered by hand would lose a column's data silently): where the rows would not fit, refused
            checked = await check_drift(rows, dst, projects, revisions=(dst_rev if release else src_rev, dst_rev),
                                        known=run.reflections)
            problems += checked.problems
            drift, drift_notes = checked.diffs, checked.notes
        # who receives it
        facts, products = await _destination_facts(settings, rows, dst, projects, problems if owner else [])
        facts.recipients = {
            p: (m.destination.id, m.destination.primary_gid)  # type: ignore[misc,union-attr]
            for p in projects if (m := matches.get(selection.owners.get(selection.root_of(p)) or 0)) and m.matched
        }
        facts.into_folder = settings.choices.into_folder
        if rows is not None:
            facts.groups = await _shared_groups(settings, src, rows, dst, projects)
        if run.locks is not None and projects and not problems:
            # one run of these projects at a time from here on; what another run inserted while this
            # one waited is seen below (no transaction is kept open while waiting)
            for conn in {src, dst, rows} - {None}:
                await conn.rollback()  # type: ignore[union-attr]  # read-only so far: ended, not kept open while waiting
            await run.locks.acquire(selection.destination_uuids)
        # collisions: the same uuid or file_id for something that is not this project
        already = await _collisions(settings, rows, dst, selection, problems)
    finally:
        await staging.aclose()

    return PreflightReport(
        matches=list(matches.values()),
        source_revision=src_rev,
        destination_revision=dst_rev,
        release=release,
        source_states=states,
        selection=selection,
        already_migrated=already,
        facts=facts,
        products=products,
        schema_drift=[d.__dict__ for d in drift if not d.identical],
        drift_notes=drift_notes,
    )


async def _match_owners(
    settings: MigrationSettings, src: AsyncConnection, dst: AsyncConnection, selection: Selection, problems: list[str],
    *, strict: bool,
) -> tuple[Selection, dict[int, Match]]:
    """Each root's owner matched to an account of the destination (:mod:`projmig.people`); a root whose
    owner matches no one is a problem (one line per owner), or with ``choices.skip_unmatched`` left out
    and reported."""
    owners = {selection.owners.get(r) for r in selection.roots} - {None}
    matches = await match_people(src, dst, await people(src, ids=owners), settings.choices)  # type: ignore[arg-type]
    unmatched = {owner: m for owner, m in matches.items() if not m.matched}
    skipped: dict[str, str] = {}
    for owner, match in unmatched.items():
        theirs = [r for r in selection.roots if selection.owners.get(r) == owner]
        why = f"source user {match.source.describe()}: {match.problem}"
        if settings.choices.skip_unmatched or not strict:
            skipped.update({root: why for root in theirs})
        else:
            problems.append(f"{why}; their {len(theirs)} projects cannot move (choices.skip_unmatched, --skip-unmatched, "
                            "skips them and reports them)")
    return selection.without(skipped) if skipped else selection, matches


async def _shared_groups(
    settings: MigrationSettings, src: AsyncConnection, rows: AsyncConnection, dst: AsyncConnection, projects: list[str],
) -> dict[int, int]:
    """Source group -> destination group, for the groups the projects are shared with besides the
    owner's, Everyone and the product's: another user's primary group when that user's account is
    matched (:mod:`projmig.people`, with ``choices.match_users``/``user_map``), a standard group when
    ``choices.group_map`` names it (by name on both sides). Any other is dropped by the plan and reported."""
    gids = [r[0] for r in await rows.execute(
        text("SELECT DISTINCT gid FROM project_to_groups WHERE project_uuid = ANY(:p)"), {"p": projects})]
    mapped: dict[int, int] = {}
    if settings.choices.matches_users and gids:
        sharers = await people(src, gids=gids)
        for match in (await match_people(src, dst, sharers, settings.choices)).values():
            if match.matched and match.source.primary_gid is not None:
                mapped[match.source.primary_gid] = match.destination.primary_gid  # type: ignore[union-attr,assignment]
    if settings.choices.group_map and gids:
        names = dict((await src.execute(
            text("SELECT gid, name FROM groups WHERE gid = ANY(:g) AND type = 'STANDARD'"), {"g": gids})).all())
        wanted = {gid: settings.choices.group_map[name] for gid, name in names.items() if name in settings.choices.group_map}
        found = dict((await dst.execute(text("SELECT name, gid FROM groups WHERE name = ANY(:n) AND type = 'STANDARD'"),
                                        {"n": list(wanted.values())})).all())
        mapped.update({gid: found[name] for gid, name in wanted.items() if name in found})
    return mapped


def release_path(package: Path, src_rev: str, dst_rev: str, problems: list[str]) -> tuple[OsparcMigrations, MigrationPath] | None:
    """osparc's migrations from the source's revision to the destination's (each problem one line)."""
    try:
        migrations = OsparcMigrations.at(package, what="host.schema_migrations")
        migrations.revision(src_rev, "source revision")
        migrations.revision(dst_rev, "destination revision")
        return migrations, migrations.path(src_rev, dst_rev)
    except ConfigError as exc:
        problems += exc.problems
        return None


async def _collisions(
    settings: MigrationSettings, rows: AsyncConnection | None, dst: AsyncConnection, selection: Selection,
    problems: list[str],
) -> list[str]:
    """The projects this migration inserted in an earlier run; each project or file the destination
    holds under one of this migration's ids that is not this migration's is a problem. ``rows``: where
    the projects' rows are (None: not staged yet; their file ids are checked by a later preflight)."""
    projects = selection.projects
    already: list[str] = []
    if settings.choices.uuid_policy == UuidPolicy.KEEP and projects:
        existing = await creation_dates(dst, projects)
        for uuid, (created, name) in existing.items():
            if created == selection.created[uuid]:
                already.append(uuid)
            else:
                problems.append(
                    f"collision: the destination already has a different project {uuid} ({name!r}, created "
                    f"{created:%Y-%m-%d %H:%M}): use choices.uuid_policy=new (--uuid-policy new) to copy it under new ids"
                )
        file_ids = [] if rows is None else [r[0] for r in await rows.execute(
            text("SELECT file_id FROM file_meta_data WHERE project_id = ANY(:p)"), {"p": projects}
        )]
        if file_ids:
            clashes = (await dst.execute(
                text("SELECT file_id, project_id FROM file_meta_data WHERE file_id = ANY(:f) "
                     "AND (project_id IS NULL OR NOT project_id = ANY(:ours)) ORDER BY file_id LIMIT 6"),
                {"f": file_ids, "ours": already or [""]},
            )).all()
            for file_id, owner in clashes[:5]:
                problems.append(f"collision: destination file_id {file_id} already belongs to project {owner}")
            if len(clashes) > 5:
                problems.append("collision: more destination file_ids clash")
    if selection.new_uuids:
        already = await _earlier_copies(dst, selection, problems)
    return already


async def _earlier_copies(dst: AsyncConnection, selection: Selection, problems: list[str]) -> list[str]:
    """The new ids must be free, or hold this same copy from an earlier run (resume)."""
    already: list[str] = []
    new_uuids = selection.new_uuids
    existing = await creation_dates(dst, list(new_uuids.values()))
    for src_uuid, dst_uuid in new_uuids.items():
        if dst_uuid not in existing:
            continue
        created, name = existing[dst_uuid]
        if created == selection.created[src_uuid]:
            already.append(dst_uuid)
        else:
            problems.append(
                f"collision: the destination has a project {dst_uuid} ({name!r}) that is not the copy of {src_uuid}: "
                "choose another choices.copy_label (--copy-label)"
            )
    clashes = (await dst.execute(
        text("SELECT file_id, project_id FROM file_meta_data WHERE split_part(file_id, '/', 1) = ANY(:new) "
             "AND (project_id IS NULL OR project_id <> split_part(file_id, '/', 1)) ORDER BY file_id LIMIT 6"),
        {"new": list(new_uuids.values())},
    )).all()
    for file_id, owner in clashes[:5]:
        problems.append(f"collision: destination file_id {file_id} already belongs to project {owner}")
    return already


async def _destination_facts(
    settings: MigrationSettings, rows: AsyncConnection | None, dst: AsyncConnection, projects: list[str], problems: list[str]
) -> tuple[DestinationFacts, dict[str, int | None]]:
    """The destination owner, group and products. ``rows``: where the projects' rows are (None: not
    staged yet: the products of the projects are checked by a later preflight)."""
    chosen = settings.choices
    owner_gid = 0
    if chosen.destination_user_id is None:
        if not chosen.matches_users:  # (matched: each project's owner has an account of their own)
            problems.append("give the destination user who will own the projects (choices.destination_user_id, --to-user)")
        owner = None
    else:
        owner = (await dst.execute(
            text("SELECT id, primary_gid FROM users WHERE id = :u"), {"u": chosen.destination_user_id}
        )).first()
        if owner is None:
            problems.append(f"destination user {chosen.destination_user_id} does not exist (choices.destination_user_id)")
    if owner is not None and owner.primary_gid is None:
        problems.append(f"destination user {chosen.destination_user_id} has no primary group")
    elif owner is not None:
        owner_gid = owner.primary_gid
        if chosen.destination_user_gid is not None and chosen.destination_user_gid != owner_gid:
            problems.append(
                f"choices.destination_user_gid {chosen.destination_user_gid} is not the primary group of user "
                f"{chosen.destination_user_id} ({owner_gid})"
            )
    if chosen.product_name:
        wanted = {chosen.product_name}
    elif rows is None:
        wanted = set()
    else:
        wanted = {r[0] for r in await rows.execute(
            text("SELECT DISTINCT product_name FROM projects WHERE uuid = ANY(:p)"), {"p": projects}
        )}
    products = dict((await dst.execute(
        text("SELECT name, group_id FROM products WHERE name = ANY(:n)"), {"n": list(wanted)}
    )).all())
    for name in sorted(wanted - products.keys()):
        source = "choices.product_name" if chosen.product_name else "the source project's product; set choices.product_name"
        problems.append(f"destination product {name!r} does not exist ({source})")
    everyone = await dst.scalar(text("SELECT gid FROM groups WHERE type = 'EVERYONE' LIMIT 1"))
    facts = DestinationFacts(
        owner_id=chosen.destination_user_id or 0,
        owner_gid=owner_gid,
        everyone_gid=everyone,
        product_name=chosen.product_name,
        product_gids=products,
        bucket=settings.destination.s3.bucket,
    )
    return facts, products
