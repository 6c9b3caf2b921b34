"""Each step of a migration as one call that takes settings, not clients.

This is what the Prefect tasks, the CLI and the tests call: every call opens the connections it
needs from the settings and closes them, so a step can run in any process (a thread, a Dask
worker, a rerun after a crash) and its inputs stay hashable and free of live objects.

The settings' credentials are values: a run resolves its references once, before its first step
(``flows/credentials.py`` for flows and the CLI; :func:`projmig.settings.resolve_secrets` for a
library caller); a step given a reference fails with one line naming it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

from .db import create_engine, open_engine
from .errors import PreflightError, TransferError
from .locks import ProjectLocks, project_locks
from .graph import ProjectGraph, snapshot
from .insert import InsertResult, ProjectInsert, insert_each, insert_plan
from .buckets import ObjectState, abort_marked_uploads, abort_uploads, list_prefix
from .budget import ByteBudget
from .copier import CopyOutcome, ObjectCopier, refuse_oversized
from .objects import compare_with_destination
from .marks import mark_of
from .plan import MigrationPlan, ObjectCopy
from .preflight import PreflightReport, run_preflight
from .rollback import (
    RollbackResult,
    find_objects,
    recompute_plan,
    refuse_shared_bucket,
    remove_objects,
    remove_rows,
)
from .s3 import Retrier, s3_client
from .s3data import DataPath, data_path
from .selection import plan_selection, read_selection
from .settings import DatabaseSettings, MigrationSettings, S3Settings, UuidPolicy
from .rowcheck import Difference, compare as compare_row_texts, read_text_rows
from .verify import VerifyReport, compare_objects_sha256, verify_copies

MiB = 1024 * 1024
LISTINGS_AT_ONCE = 4  # prefix listings in flight at once (one per project)

__all__ = [
    "preflight",
    "read_project_graph",
    "make_plan",
    "plan_migration",
    "compare",
    "copy_objects",
    "verify_objects",
    "insert_rows",
    "insert_rows_each",
    "abort_our_uploads",
    "verify_migration",
    "rollback_rows",
    "rollback_objects",
    "rollback_migration",
    "holding_locks",
]


def retrier(settings: MigrationSettings) -> Retrier:
    return Retrier.of(settings.options)


async def preflight(settings: MigrationSettings, *, probe_write: bool = True) -> PreflightReport:
    """The checks before any byte moves; inside :func:`holding_locks`, the projects are locked too."""
    return await run_preflight(settings, probe_write=probe_write, locks=_held_locks(settings))


@dataclass
class _HeldLocks:
    locks: ProjectLocks
    loop: asyncio.AbstractEventLoop
    destination: DatabaseSettings


_locks: ContextVar[_HeldLocks | None] = ContextVar("projmig_locks", default=None)


@asynccontextmanager
async def holding_locks(settings: MigrationSettings) -> AsyncIterator[ProjectLocks]:
    """One run of a migration (or rollback): the steps awaited in this block, in this event loop (the
    run's tasks), lock the destination projects they work on (:mod:`projmig.locks`) on one connection
    kept open until the block ends, when all of them are released."""
    async with project_locks(settings.destination.db, settings.options.lock_wait) as locks:
        token = _locks.set(_HeldLocks(locks, asyncio.get_running_loop(), settings.destination.db))
        try:
            yield locks
        finally:
            _locks.reset(token)


async def _confirm_locks(settings: MigrationSettings) -> None:
    """Inside :func:`holding_locks`: the run still holds its projects' locks (before it inserts)."""
    locks = _held_locks(settings)
    if locks is not None:
        await locks.confirm()


def _held_locks(settings: MigrationSettings) -> ProjectLocks | None:
    held = _locks.get()
    if held is None or held.loop is not asyncio.get_running_loop() or held.destination != settings.destination.db:
        return None
    return held.locks


async def read_project_graph(settings: MigrationSettings, report: PreflightReport) -> ProjectGraph:
    retry = retrier(settings)
    s3 = settings.source.s3
    async with open_engine(settings.source.db, "source") as engine, _lister(settings, s3) as (client, data):
        slots = asyncio.Semaphore(LISTINGS_AT_ONCE)

        async def listing(prefix: str) -> dict[str, tuple[int, str]]:
            async with slots:
                found = await list_prefix(client, s3.bucket, prefix, retry, data=data)
            return {k: (v.size, v.etag) for k, v in found.items()}

        # the projects the preflight found are listed while the database is read
        early = {f"{u}/": asyncio.ensure_future(listing(f"{u}/")) for u in report.selection.projects}

        async def lister(prefix: str) -> dict[str, tuple[int, str]]:
            started = early.pop(prefix, None)
            return await started if started is not None else await listing(prefix)

        try:
            async with snapshot(engine) as conn:  # every row of every project as of one moment
                graph = await read_selection(conn, lister, report.selection)
            # before any byte moves: an object the destination cannot take fails the run now
            refuse_oversized(graph.objects, settings.destination.s3.max_object_size, settings.destination.s3.bucket)
            await _refuse_missing(settings, graph, retry)
            return graph
        finally:
            for task in early.values():
                task.cancel()
            await asyncio.gather(*early.values(), return_exceptions=True)


async def _refuse_missing(settings: MigrationSettings, graph: ProjectGraph, retry: Retrier) -> None:
    """Missing source data fails the run before any byte moves, one line per file entry: a file without
    its object, a directory without objects under its prefix, a soft link whose target is neither copied
    with these projects nor in the destination. With ``options.allow_missing_objects`` each becomes a
    warning of the plan instead, and the row moves without it."""
    links = [e for e in graph.missing if e.kind == "soft_link"]
    if links:
        renamed = {p.uuid for p in graph.projects} if settings.options.uuid_policy == UuidPolicy.NEW else set()
        bucket = settings.destination.s3.bucket
        async with s3_client(settings.destination.s3) as dst:
            for entry in links:
                target = entry.object_name or ""
                # under new ids a target under a copied project's prefix is rewritten to the copy's: not there
                if target.split("/", 1)[0] not in renamed and target in await list_prefix(dst, bucket, target, retry):
                    entry.missing = None  # already in the destination (e.g. migrated with its own project)
                else:
                    entry.missing = (f"soft link {entry.file_id}: its target {target} is neither copied with these "
                                     "projects nor in the destination bucket")
    missing = [e.missing for e in graph.missing if e.missing]
    if not missing:
        return
    if not settings.options.allow_missing_objects:
        raise PreflightError([f"{m} (options.allow_missing_objects moves such rows without it)" for m in missing])
    graph.warnings += [f"{m}: its row moves without it (options.allow_missing_objects)" for m in missing]


async def list_destination(settings: MigrationSettings, prefixes: list[str]) -> dict[str, dict[str, ObjectState]]:
    """prefix -> what the destination holds under it (for :func:`compare`, taken while the graph is read)."""
    retry = retrier(settings)
    slots = asyncio.Semaphore(LISTINGS_AT_ONCE)
    async with _lister(settings, settings.destination.s3) as (dst, data):

        async def one(prefix: str) -> dict[str, ObjectState]:
            async with slots:
                return await list_prefix(dst, settings.destination.s3.bucket, prefix, retry, data=data)

        found = await asyncio.gather(*(one(p) for p in prefixes))
    return dict(zip(prefixes, found))


def make_plan(graph: ProjectGraph, report: PreflightReport) -> MigrationPlan:
    return plan_selection(graph, report.selection, report.facts, report.drift_notes)


async def plan_migration(settings: MigrationSettings) -> tuple[PreflightReport, MigrationPlan]:
    """What a migration with these settings would do, writing nothing: the preflight (no write probe),
    the graph and the plan (``projmig plan``, ``verify``, ``cleanup``)."""
    report = await preflight(settings, probe_write=False)
    return report, make_plan(await read_project_graph(settings, report), report)


async def compare(
    settings: MigrationSettings, copies: list[ObjectCopy], listed: dict[str, dict[str, ObjectState]] | None = None
) -> tuple[list[CopyOutcome], list[tuple[ObjectCopy, ObjectState | None]]]:
    """(already in the destination, still to copy); ``listed``: listings taken earlier in this run
    (:func:`list_destination`), else the destination is listed now."""
    async with _lister(settings, settings.destination.s3) as (dst, data):
        return await compare_with_destination(
            dst, settings.destination.s3.bucket, copies, retrier(settings), listed=listed, data=data
        )


async def copy_objects(
    settings: MigrationSettings,
    items: list[tuple[ObjectCopy, ObjectState | None]],
    *,
    share: int = 1,
    on_bytes: Callable[[int], None] | None = None,
) -> list[CopyOutcome]:
    """Copy ``items``. Inside :func:`shared_copy` (same settings, same event loop) the call uses its
    clients and limits; else its own, with ``share``: how many such calls run at once (they split
    the limits)."""
    opts = settings.options
    shared = _shared_copy.get()
    if shared is not None and shared.serves(settings):
        return await shared.copier(settings, on_bytes).copy_all(items)
    lean = opts.s3_data_client == "lean"
    pool = max(opts.copy_concurrency // share, opts.part_concurrency) + 4
    async with (
        _clients(settings) as (src, dst),
        data_path(settings.source.s3, src, lean=lean, max_connections=pool) as src_data,
        data_path(settings.destination.s3, dst, lean=lean, max_connections=pool) as dst_data,
    ):
        copier = _copier(
            settings, src, dst, src_data, dst_data, on_bytes,
            concurrency=max(1, opts.copy_concurrency // share),
            memory_limit=max(opts.multipart_chunksize, opts.memory_limit // share),
        )
        return await copier.copy_all(items)


def _copier(
    settings: MigrationSettings, src: Any, dst: Any, src_data: DataPath, dst_data: DataPath,
    on_bytes: Callable[[int], None] | None, **limits: Any,
) -> ObjectCopier:
    opts = settings.options
    return ObjectCopier(
        src,
        dst,
        settings.source.s3.bucket,
        settings.destination.s3.bucket,
        retry=retrier(settings),
        server_side=settings.source.s3.same_endpoint_as(settings.destination.s3),
        multipart_threshold=opts.multipart_threshold,
        multipart_chunksize=opts.multipart_chunksize,
        part_concurrency=opts.part_concurrency,
        on_bytes=on_bytes,
        src_data=src_data,
        dst_data=dst_data,
        verification=opts.verification if opts.verification in ("checksum", "sha256") else "etag",
        **limits,
    )


@dataclass
class _SharedCopy:
    settings: MigrationSettings
    loop: asyncio.AbstractEventLoop
    src: Any
    dst: Any
    src_data: DataPath
    dst_data: DataPath
    slots: asyncio.Semaphore
    budget: ByteBudget

    def serves(self, settings: MigrationSettings) -> bool:
        mine = self.settings
        return (
            asyncio.get_running_loop() is self.loop
            and settings.source.s3 == mine.source.s3
            and settings.destination.s3 == mine.destination.s3
            and settings.options == mine.options
        )

    def copier(self, settings: MigrationSettings, on_bytes: Callable[[int], None] | None) -> ObjectCopier:
        return _copier(settings, self.src, self.dst, self.src_data, self.dst_data, on_bytes,
                       slots=self.slots, budget=self.budget)


_shared_copy: ContextVar[_SharedCopy | None] = ContextVar("projmig_shared_copy", default=None)


@asynccontextmanager
async def shared_copy(settings: MigrationSettings) -> AsyncIterator[None]:
    """Let the :func:`copy_objects` calls awaited in this block, in this event loop (the concurrent
    copy task runs of a flow), share one pair of clients, one connection pool per side and the
    limits (``copy_concurrency`` objects, ``memory_limit`` bytes, across all of them): a batch that
    finishes late gets every free slot instead of its share, and no call opens clients of its own."""
    opts = settings.options
    lean = opts.s3_data_client == "lean"
    pool = max(opts.copy_concurrency, opts.part_concurrency) + 4
    async with (
        s3_client(settings.source.s3, max_connections=pool) as src,
        s3_client(settings.destination.s3, max_connections=pool) as dst,
        data_path(settings.source.s3, src, lean=lean, max_connections=pool) as src_data,
        data_path(settings.destination.s3, dst, lean=lean, max_connections=pool) as dst_data,
    ):
        token = _shared_copy.set(_SharedCopy(
            settings=settings, loop=asyncio.get_running_loop(), src=src, dst=dst, src_data=src_data,
            dst_data=dst_data, slots=asyncio.Semaphore(opts.copy_concurrency), budget=ByteBudget(opts.memory_limit),
        ))
        try:
            yield
        finally:
            _shared_copy.reset(token)


async def verify_objects(settings: MigrationSettings, copies: list[ObjectCopy]) -> dict[str, ObjectState]:
    async with _lister(settings, settings.destination.s3) as (dst, data):
        return await verify_copies(dst, settings.destination.s3.bucket, copies, retrier(settings), data=data)


async def insert_rows(
    settings: MigrationSettings, plan: MigrationPlan, verified: dict[str, ObjectState]
) -> InsertResult:
    """One transaction; the source is read again just before COMMIT (a project changed meanwhile: nothing
    committed)."""
    async with (
        open_engine(settings.destination.db, "destination") as engine,
        open_engine(settings.source.db, "source") as source,
        _lister(settings, settings.source.s3) as (client, data),
    ):
        await _confirm_locks(settings)
        return await insert_plan(engine, plan, verified, source=source,
                                 source_listing=_source_listing(settings, client, data))


async def insert_rows_each(
    settings: MigrationSettings, plan: MigrationPlan, verified: dict[str, ObjectState], roots: list[str]
) -> list[ProjectInsert]:
    """Several root projects: each root's graph in its own transaction (``options.project_concurrency`` at once)."""
    concurrency = settings.options.project_concurrency
    engine = create_engine(settings.destination.db, pool_size=concurrency, role="destination")
    source = create_engine(settings.source.db, pool_size=concurrency, role="source")
    try:
        async with _lister(settings, settings.source.s3) as (client, data):
            await _confirm_locks(settings)
            return await insert_each(engine, plan, verified, roots, concurrency=concurrency, source=source,
                                     source_listing=_source_listing(settings, client, data))
    finally:
        await engine.dispose()
        await source.dispose()


async def abort_our_uploads(
    settings: MigrationSettings, copies: list[ObjectCopy], *, older_than: timedelta | None = None,
    probe_key: str | None = None,
) -> list[str]:
    """Abort the open multipart uploads of these copies' destination keys that this migration started
    (:mod:`projmig.marks`), and those of the preflight's write probe (``probe_key``, projmig's own name)."""
    cutoff = datetime.now(timezone.utc) - older_than if older_than is not None else None
    marks = {c.dst_key: mark_of(c.src_key, c.dst_key) for c in copies}
    bucket, retry = settings.destination.s3.bucket, retrier(settings)
    async with s3_client(settings.destination.s3) as dst:
        aborted = await abort_marked_uploads(dst, bucket, marks, retry, older_than=cutoff)
        if probe_key is not None:
            aborted += await abort_uploads(dst, bucket, probe_key, retry, keys={probe_key}, older_than=cutoff)
    return aborted


async def verify_migration(settings: MigrationSettings, *, deep: bool = True) -> VerifyReport:
    """Compare the destination with the source: rows in PostgreSQL's text form modulo the documented
    remaps (:mod:`projmig.rowcheck`); objects by size/ETag, and by SHA-256 of their bytes when ``deep``."""
    started = time.monotonic()
    _, plan = await plan_migration(settings)
    result = VerifyReport(projects=[p.dst_uuid for p in plan.projects])
    retry = retrier(settings)
    lean = settings.options.s3_data_client == "lean"
    async with (
        _clients(settings) as (src, dst),
        data_path(settings.source.s3, src, lean=lean) as src_data,
        data_path(settings.destination.s3, dst, lean=lean) as dst_data,
    ):
        there, missing = await compare_with_destination(
            dst, settings.destination.s3.bucket, plan.copies, retry, data=dst_data
        )
        for copy, state in missing:
            what = "missing" if state is None else f"{state.size} bytes, ETag {state.etag} (source {copy.size}, {copy.etag})"
            result.differences.append(Difference(where=copy.dst_key, what=what))
        if deep:
            absent = {m[0].dst_key for m in missing}
            result.differences += await compare_objects_sha256(
                src_data, dst_data, settings.source.s3.bucket, settings.destination.s3.bucket,
                [c for c in plan.copies if c.dst_key not in absent], retry,
            )
            result.bytes_hashed = 2 * sum(c.size for c in plan.copies)
        result.objects_checked = len(plan.copies)
    dest_objects = {o.dst_key: ObjectState(size=o.size, etag=o.etag) for o in there}
    assert plan.expected is not None  # every plan built from a graph carries the source's rows as text
    async with open_engine(settings.destination.db, "destination") as engine, engine.connect() as conn:
        rows = compare_row_texts(plan.expected, await read_text_rows(conn, result.projects), dest_objects)
    result.rows_checked = rows.checked
    result.differences += rows.differences
    result.notes = rows.notes
    result.seconds = time.monotonic() - started
    return result


async def rollback_rows(settings: MigrationSettings, *, dry_run: bool = False) -> RollbackResult:
    """Recompute the migration's plan from the source; in one destination transaction, check that its
    projects are unchanged since the migration and delete their rows (dry run: count them); then find
    the migration's objects in the destination (deleted by :func:`rollback_objects`)."""
    retry = retrier(settings)
    await refuse_shared_bucket(settings, retry)
    s3 = settings.source.s3
    async with (
        open_engine(settings.source.db, "source") as src,
        open_engine(settings.destination.db, "destination") as dst,
        _lister(settings, s3) as (client, data),
    ):

        async def lister(prefix: str) -> dict[str, tuple[int, str]]:
            found = await list_prefix(client, s3.bucket, prefix, retry, data=data)
            return {k: (v.size, v.etag) for k, v in found.items()}

        async with src.connect() as conn, dst.connect() as dst_conn:
            plan = await recompute_plan(conn, dst_conn, lister, settings)
        locks = _held_locks(settings)
        if locks is not None and not dry_run:
            await locks.acquire(p.dst_uuid for p in plan.projects)
        removal = await remove_rows(
            dst, src, plan, keep_ids=settings.options.uuid_policy == UuidPolicy.KEEP, dry_run=dry_run
        )
    async with s3_client(settings.destination.s3) as client:
        return await find_objects(client, settings.destination.s3.bucket, plan, removal, retry, dry_run=dry_run)


async def rollback_objects(settings: MigrationSettings, result: RollbackResult) -> RollbackResult:
    """Abort the unfinished uploads of the migration's keys and delete, of the objects :func:`rollback_rows`
    found, those that carry the migration's mark as read just before (:func:`projmig.rollback.remove_objects`)."""
    try:
        async with s3_client(settings.destination.s3) as client:
            return await remove_objects(client, settings.destination.s3.bucket, result, retrier(settings))
    except TransferError as exc:
        rows = "the rows are removed; " if result.removed_projects and not result.dry_run else ""
        raise TransferError(f"{exc} ({rows}rerun the rollback to remove the objects left)", transient=exc.transient) from exc


async def rollback_migration(settings: MigrationSettings, *, dry_run: bool = False) -> RollbackResult:
    """Remove from the destination what the migration with these settings inserted: rows, then objects,
    holding the projects' locks (no migration of them runs meanwhile). Raises
    :class:`projmig.rollback.RollbackRefused` (nothing removed) when a project changed since, and
    :class:`projmig.locks.MigrationBusy` when a migration of one of them is running."""
    async with holding_locks(settings):
        result = await rollback_rows(settings, dry_run=dry_run)
        if dry_run:
            return result
        return await rollback_objects(settings, result)


def _source_listing(settings: MigrationSettings, client: Any, data: DataPath) -> Callable[[str], Any]:
    """prefix -> {key: (size, ETag)} in the source bucket, as the graph listed it (same data path)."""
    retry = retrier(settings)

    async def listing(prefix: str) -> dict[str, tuple[int, str]]:
        found = await list_prefix(client, settings.source.s3.bucket, prefix, retry, data=data)
        return {k: (v.size, v.etag) for k, v in found.items()}

    return listing


@asynccontextmanager
async def _lister(settings: MigrationSettings, s3: S3Settings) -> AsyncIterator[tuple[Any, DataPath]]:
    """A client for one side, and the data path whose listings are cheaper to parse (lean, if possible)."""
    async with s3_client(s3) as client, data_path(s3, client, lean=settings.options.s3_data_client == "lean") as data:
        yield client, data


@asynccontextmanager
async def _clients(settings: MigrationSettings) -> AsyncIterator[tuple[Any, Any]]:
    async with s3_client(settings.source.s3) as src, s3_client(settings.destination.s3) as dst:
        yield src, dst
