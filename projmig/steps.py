"""Each step of a migration as one call on a run (:class:`projmig.run.MigrationRun`).

A step takes the run (its settings, S3 sides, retrier, locks) and plain data, and opens the database
connections it needs for as long as it needs them: what a step depends on is in its signature. The
pipeline (:mod:`projmig.pipeline`) calls them in order; the Prefect tasks (``flows/tasks.py``) wrap the
same calls. The settings' credentials are values: a run resolves its references once, before it opens
(``flows/credentials.py``, or :func:`projmig.settings.resolve_secrets`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy.ext.asyncio import AsyncConnection

from .buckets import ObjectState, abort_marked_uploads, abort_uploads, list_prefix
from .choices import UuidPolicy
from .copier import CopyOutcome, refuse_oversized
from .db import alembic_revision, create_engine, open_engine
from .errors import PreflightError, TransferError
from .graph import ProjectGraph, SourceState, snapshot
from .insert import Confirm, RootInsert, insert_each
from .marks import mark_of
from .objects import compare_with_destination
from .placement import Placed, placements_of, read_placed
from .plan import MigrationPlan, ObjectCopy
from .preflight import PreflightReport, Selected, release_path, run_preflight, write_probe
from .rollback import RollbackResult, find_objects, recompute_plan, refuse_shared_bucket, remove_objects, remove_rows
from .rowcheck import Difference, compare as compare_row_texts, read_text_rows
from .run import MigrationRun, Side, Transfers
from .selection import Selection, plan_selection, read_selection
from .verify import VerifyReport, compare_objects_sha256, states_of

LISTINGS_AT_ONCE = 4  # prefix listings in flight at once (one per project)

Listed = dict[str, dict[str, ObjectState]]  # prefix -> key -> state: a destination listing taken earlier
Batch = list[tuple[ObjectCopy, ObjectState | None]]  # objects to copy, with what the destination has of each


async def preflight(
    run: MigrationRun, *, probe_write: bool = True, probe_now: bool = True, owner: bool = True, stage: bool = True,
    on_selected: Selected | None = None,
) -> PreflightReport:
    """The checks before any byte moves; a run that holds locks locks its projects here, and a run
    across osparc releases stages their rows (``stage=False``: the CLI's early check before Prefect
    starts leaves that to the flow). ``owner``: the destination owner is checked (not by ``cleanup``).
    ``probe_now=False``: the write probe is left to :func:`write_probe` (:func:`survey`'s, while it reads
    the graph); ``on_selected``: :func:`projmig.preflight.run_preflight`'s."""
    return await run_preflight(run, probe_write=probe_write, probe_now=probe_now, owner=owner, stage=stage,
                               on_selected=on_selected)


def source_listing(run: MigrationRun) -> Callable[[str], Awaitable[dict[str, tuple[int, str]]]]:
    """prefix -> {key: (size, ETag)} in the source bucket: how the graph lists a project or a directory
    entry, and how the insert lists them again before COMMIT (the same data path, so that they compare)."""
    source = run.source

    async def listing(prefix: str) -> dict[str, tuple[int, str]]:
        found = await list_prefix(source.client, source.bucket, prefix, run.retry, data=source.data)
        return {k: (v.size, v.etag) for k, v in found.items()}

    return listing


async def read_graph(
    run: MigrationRun, report: PreflightReport | Selection, states: dict[str, SourceState] | None = None,
) -> ProjectGraph:
    """The selected projects' rows (one snapshot of the source) and their objects (each project's
    prefix listed once, while the database is read); missing source data fails the run here.
    ``report``: the preflight's, or the selection it found while it still runs (with ``states``, the
    source states it read across releases)."""
    if isinstance(report, PreflightReport):
        selection, states = report.selection, report.source_states
    else:
        selection, states = report, states or {}
    slots = asyncio.Semaphore(LISTINGS_AT_ONCE)
    listed = source_listing(run)

    async def listing(prefix: str) -> dict[str, tuple[int, str]]:
        async with slots:
            return await listed(prefix)

    early = {f"{u}/": asyncio.ensure_future(listing(f"{u}/")) for u in selection.projects}

    async def lister(prefix: str) -> dict[str, tuple[int, str]]:
        started = early.pop(prefix, None)
        return await started if started is not None else await listing(prefix)

    try:
        if run.staged is None:
            async with open_engine(run.settings.source.db, "source") as engine, snapshot(engine) as conn:
                graph = await read_selection(conn, lister, selection, known=run.reflections)
                graph.placements = await placements_of(conn, graph.root_owners(), run.settings.choices)
        else:  # across releases: the rows as staged; what the source holds besides them, from the source
            async with (
                open_engine(run.staged.db, "staging") as engine, snapshot(engine) as conn,
                open_engine(run.settings.source.db, "source") as source, source.connect() as source_conn,
            ):
                graph = await read_selection(conn, lister, selection, source=source_conn, states=states,
                                             known=run.reflections)
                graph.placements = await placements_of(source_conn, graph.root_owners(), run.settings.choices)
        # before any byte moves: an object the destination cannot take fails the run now
        refuse_oversized(graph.objects, run.destination.s3.max_object_size, run.destination.bucket)
        await _refuse_missing(run, graph)
        return graph
    finally:
        for task in early.values():
            task.cancel()
        await asyncio.gather(*early.values(), return_exceptions=True)


async def _refuse_missing(run: MigrationRun, graph: ProjectGraph) -> None:
    """Missing source data fails the run before any byte moves, one line per file entry: a file without
    its object, a directory without objects under its prefix, a soft link whose target is neither copied
    with these projects nor in the destination. With ``options.allow_missing_objects`` each becomes a
    warning of the plan instead, and the row moves without it."""
    links = [e for e in graph.missing if e.kind == "soft_link"]
    renamed = {p.uuid for p in graph.projects} if run.settings.choices.uuid_policy == UuidPolicy.NEW else set()
    dst = run.destination
    for entry in links:
        target = entry.object_name or ""
        # under new ids a target under a copied project's prefix is rewritten to the copy's: not there
        if target.split("/", 1)[0] not in renamed and target in await list_prefix(dst.client, dst.bucket, target, run.retry):
            entry.missing = None  # already in the destination (e.g. migrated with its own project)
        else:
            entry.missing = (f"soft link {entry.file_id}: its target {target} is neither copied with these "
                             "projects nor in the destination bucket")
    missing = [e.missing for e in graph.missing if e.missing]
    if not missing:
        return
    if not run.settings.options.allow_missing_objects:
        raise PreflightError([f"{m} (options.allow_missing_objects moves such rows without it)" for m in missing])
    graph.warnings += [f"{m}: its row moves without it (options.allow_missing_objects)" for m in missing]


async def list_destination(run: MigrationRun, prefixes: list[str]) -> Listed:
    """prefix -> what the destination holds under it (for :func:`compare`, taken while the graph is read)."""
    slots = asyncio.Semaphore(LISTINGS_AT_ONCE)
    dst = run.destination

    async def one(prefix: str) -> dict[str, ObjectState]:
        async with slots:
            return await list_prefix(dst.client, dst.bucket, prefix, run.retry, data=dst.data)

    return dict(zip(prefixes, await asyncio.gather(*(one(p) for p in prefixes))))


def make_plan(graph: ProjectGraph, report: PreflightReport) -> MigrationPlan:
    return plan_selection(graph, report.selection, report.facts, report.drift_notes)


@dataclass
class Survey:
    """What a run knows before it copies: the preflight's report, the plan, the destination's listings
    (taken by a run that writes), and the seconds until the checks passed (``preflight``) and from
    there until the plan was made (``graph``)."""

    report: PreflightReport
    plan: MigrationPlan
    listed: Listed | None
    seconds: dict[str, float]


async def survey(run: MigrationRun, *, probe_write: bool, owner: bool = True) -> Survey:
    """The preflight and the plan, overlapped: the source's graph is read (read-only) as soon as the
    preflight knows the projects, while its other checks run; once they passed, the write probe
    (``probe_write``: a run that writes; the preflight's only write, after every check) while the
    destination is listed. A refusal of the checks comes first, then the probe's, then the graph's."""
    began = time.monotonic()
    reading: asyncio.Future[ProjectGraph] | None = None

    def selected(selection: Selection, states: dict[str, SourceState]) -> None:
        nonlocal reading
        reading = asyncio.ensure_future(read_graph(run, selection, states))

    try:
        report = await preflight(run, probe_write=probe_write, probe_now=False, owner=owner, on_selected=selected)
        checked = time.monotonic()
        if reading is None:  # (no rows to read early: e.g. across releases, staged by this preflight only)
            reading = asyncio.ensure_future(read_graph(run, report))
        probed, listed, graph = await asyncio.gather(
            write_probe(run, report) if probe_write else _nothing(),
            list_destination(run, report.selection.destination_prefixes) if probe_write else _nothing(),
            reading,
            return_exceptions=True,
        )
    finally:
        if reading is not None:  # (a refused run: the graph's read stops; its outcome is taken, never left)
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    for outcome in (probed, graph, listed):
        if isinstance(outcome, BaseException):
            raise outcome
    plan = make_plan(graph, report)  # type: ignore[arg-type]
    return Survey(report, plan, listed, {"preflight": checked - began, "graph": time.monotonic() - checked})  # type: ignore[arg-type]


async def _nothing() -> None:
    return None


async def plan_migration(run: MigrationRun, *, owner: bool = True) -> tuple[PreflightReport, MigrationPlan]:
    """What a migration of this run's choices would do, writing nothing: the preflight (no write
    probe), the graph and the plan (``projmig plan``, ``verify``, ``cleanup``)."""
    surveyed = await survey(run, probe_write=False, owner=owner)
    return surveyed.report, surveyed.plan


async def compare(
    run: MigrationRun, copies: list[ObjectCopy], listed: Listed | None = None
) -> tuple[list[CopyOutcome], Batch]:
    """(already in the destination, still to copy); ``listed``: listings taken earlier in this run
    (:func:`list_destination`), else the destination is listed now."""
    dst = run.destination
    return await compare_with_destination(dst.client, dst.bucket, copies, run.retry, listed=listed, data=dst.data)


async def copy_objects(
    transfers: Transfers, batch: Batch, on_bytes: Callable[[int], None] | None = None
) -> list[CopyOutcome]:
    """Copy one batch with the run's clients and within its limits (shared by the batches in flight)."""
    return await transfers.copy(batch, on_bytes)


async def insert_roots(
    run: MigrationRun, plan: MigrationPlan, verified: dict[str, ObjectState], roots: list[str],
    confirm: Confirm | None = None,
) -> list[RootInsert]:
    """Each root's graph in a transaction of its own (``options.project_concurrency`` at once),
    ``confirm`` asked (if given), then the source read again just before each COMMIT (a project
    changed meanwhile: that root is not committed); a root that fails is rolled back alone
    (:func:`projmig.insert.insert_each`)."""
    concurrency = run.settings.options.project_concurrency
    engine = create_engine(run.settings.destination.db, pool_size=concurrency, role="destination")
    source = create_engine(run.settings.source.db, pool_size=concurrency, role="source")
    try:
        await run.confirm_locks()
        return await insert_each(engine, plan, verified, roots, concurrency=concurrency, source=source,
                                 source_listing=source_listing(run), confirm=confirm, known=run.reflections)
    finally:
        await engine.dispose()
        await source.dispose()


async def abort_our_uploads(
    run: MigrationRun, copies: list[ObjectCopy], *, older_than: timedelta | None = None, probe_key: str | None = None,
) -> list[str]:
    """Abort the open multipart uploads of these copies' destination keys that this migration started
    (:mod:`projmig.marks`), and those of the preflight's write probe (``probe_key``, projmig's own name)."""
    cutoff = datetime.now(timezone.utc) - older_than if older_than is not None else None
    marks = {c.dst_key: mark_of(c.src_key, c.dst_key) for c in copies}
    dst = run.destination
    aborted = await abort_marked_uploads(dst.client, dst.bucket, marks, run.retry, older_than=cutoff)
    if probe_key is not None:
        aborted += await abort_uploads(dst.client, dst.bucket, probe_key, run.retry, keys={probe_key}, older_than=cutoff)
    return aborted


async def cleanup(run: MigrationRun, *, older_than: timedelta) -> list[str]:
    """``projmig cleanup``: the unfinished uploads this run's migration started (and the preflight's
    write probe), started longer ago than ``older_than``, aborted."""
    report, migration = await plan_migration(run, owner=False)
    return await abort_our_uploads(run, migration.copies, older_than=older_than, probe_key=report.probe_key)


async def verify_migration(run: MigrationRun, *, deep: bool = True) -> VerifyReport:
    """Compare the destination with the source: rows in PostgreSQL's text form modulo the documented
    remaps (:mod:`projmig.rowcheck`); objects by size/ETag, and by SHA-256 of their bytes when ``deep``."""
    started = time.monotonic()
    _, plan = await plan_migration(run)
    result = VerifyReport(projects=[p.dst_uuid for p in plan.projects])
    there, missing = await compare(run, plan.copies)
    for copy, state in missing:
        what = "missing" if state is None else f"{state.size} bytes, ETag {state.etag} (source {copy.size}, {copy.etag})"
        result.differences.append(Difference(where=copy.dst_key, what=what))
    if deep:
        absent = {m[0].dst_key for m in missing}
        result.differences += await compare_objects_sha256(
            run.source.data, run.destination.data, run.source.bucket, run.destination.bucket,
            [c for c in plan.copies if c.dst_key not in absent], run.retry,
        )
        result.bytes_hashed = 2 * sum(c.size for c in plan.copies)
    result.objects_checked = len(plan.copies)
    dest_objects = states_of(there)
    assert plan.expected is not None  # every plan built from a graph carries the source's rows as text
    async with open_engine(run.settings.destination.db, "destination") as engine, engine.connect() as conn:
        rows = compare_row_texts(plan.expected, await read_text_rows(conn, result.projects), dest_objects)
        result.differences += placement_differences(plan, await read_placed(conn, result.projects))
    result.rows_checked = rows.checked
    result.differences += rows.differences
    result.notes = rows.notes
    if run.staged is not None:
        result.notes.insert(0, f"rows compared with the source's as osparc's migrations make them at {run.staged.revision} "
                               f"(staged: {run.staged.path.describe()})")
    result.seconds = time.monotonic() - started
    return result


def placement_differences(plan: MigrationPlan, placed: dict[str, Placed]) -> list[Difference]:
    """Each planned folder and tag a project lacks in its owner's account (:mod:`projmig.placement`)."""
    found = []
    for project in plan.projects:
        placement, there = project.placement, placed.get(project.dst_uuid)
        if placement is None or there is None:
            continue
        path = placement.path(plan.into_folder)
        if path and path not in there.folders:
            found.append(Difference(where=f"projects_to_folders {project.dst_uuid}",
                                    what=f"not in folder {'/'.join(path)!r} (in: {['/'.join(f) for f in there.folders]})"))
        for tag in sorted({t.name for t in placement.tags} - set(there.tags)):
            found.append(Difference(where=f"projects_tags {project.dst_uuid}", what=f"tag {tag!r} missing"))
    return found


async def rollback_rows(run: MigrationRun, *, dry_run: bool = False) -> RollbackResult:
    """Recompute the migration's plan from the source; in one destination transaction, check that its
    projects are unchanged since the migration and delete their rows (dry run: count them); then find
    the migration's objects in the destination (deleted by :func:`rollback_objects`)."""
    settings = run.settings
    await refuse_shared_bucket(settings, run.retry)
    lister = source_listing(run)

    async with (
        open_engine(settings.source.db, "source") as src, open_engine(settings.destination.db, "destination") as dst,
        AsyncExitStack() as staging,
    ):
        async with src.connect() as conn, dst.connect() as dst_conn:

            async def rows_of(selection: Selection) -> AsyncConnection:
                """Across osparc releases: the migration read the rows as osparc's migrations made them."""
                return await _staged_rows(run, conn, dst_conn, selection, staging) or conn

            plan = await recompute_plan(conn, dst_conn, lister, settings, rows_of)
        if run.locks is not None and not dry_run:
            await run.locks.acquire(p.dst_uuid for p in plan.projects)
        removal = await remove_rows(
            dst, src, plan, keep_ids=settings.choices.uuid_policy == UuidPolicy.KEEP, dry_run=dry_run
        )
    return await find_objects(run.destination.client, run.destination.bucket, plan, removal, run.retry, dry_run=dry_run)


async def _staged_rows(
    run: MigrationRun, src: AsyncConnection, dst: AsyncConnection, selection: Selection, held: AsyncExitStack,
) -> AsyncConnection | None:
    """A connection to the selection's rows staged at the destination's revision (held open by
    ``held``), when the two databases are at different osparc revisions and the host has osparc's
    migrations; else None (the source's rows are the ones)."""
    src_rev, dst_rev = await alembic_revision(src), await alembic_revision(dst)
    package = run.settings.host.schema_migrations
    if src_rev == dst_rev or src_rev is None or dst_rev is None or package is None or not selection.projects:
        return None
    problems: list[str] = []
    crossing = release_path(package, src_rev, dst_rev, problems)
    if crossing is None:
        raise PreflightError(problems)
    migrations, path = crossing
    staged = await run.stage(selection.projects, migrations, path.target)
    engine = await held.enter_async_context(open_engine(staged.db, "staging"))
    return await held.enter_async_context(engine.connect())


async def rollback_objects(run: MigrationRun, result: RollbackResult) -> RollbackResult:
    """Abort the unfinished uploads of the migration's keys and delete, of the objects :func:`rollback_rows`
    found, those that carry the migration's mark as read just before (:func:`projmig.rollback.remove_objects`)."""
    dst = run.destination
    try:
        return await remove_objects(dst.client, dst.bucket, result, run.retry)
    except TransferError as exc:
        rows = "the rows are removed; " if result.removed_projects and not result.dry_run else ""
        raise TransferError(f"{exc} ({rows}rerun the rollback to remove the objects left)", transient=exc.transient) from exc


__all__ = [
    "Batch", "Listed", "RootInsert", "Side",
    "preflight", "write_probe", "read_graph", "list_destination", "make_plan", "plan_migration", "compare", "copy_objects",
    "insert_roots", "abort_our_uploads", "cleanup", "verify_migration", "rollback_rows", "rollback_objects",
]
