"""The ``migrate-project`` flow: preflight -> graph -> plan -> copy -> verify -> insert -> report.

It only orchestrates: every step is a library call (``projmig.steps``) behind a task. Objects move
in task runs of one large file or a batch of small files; what is already in the destination is
found by one listing first, so a rerun after a complete migration maps no copy task at all.

Run it locally::

    from flows.migrate import migrate_project
    report = migrate_project(settings)          # or: await migrate_project(settings)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.blocks.system import Secret
from prefect.futures import as_completed
from prefect.utilities.annotations import quote
from pydantic import ValidationError

from projmig import steps
from projmig.errors import ConfigError, ProjmigError, TransferError
from projmig.objects import CopyOutcome, ObjectState, batch_transfers
from projmig.plan import MigrationPlan, ObjectCopy
from projmig.report import MigrationReport, human_bytes
from projmig.settings import (
    MigrationOptions,
    MigrationSettings,
    SecretNotFound,
    UuidPolicy,
    format_validation_error,
    resolve_secrets,
    secret_refs,
)
from projmig.verify import verified_states

from . import tasks
from .blocks import load_deployment_block, merged_options, refuse_connections
from .many import migrate_each
from .progress import report_bytes, report_total


async def resolve_credentials(settings: MigrationSettings) -> MigrationSettings:
    """Replace secret references (environment variables, Prefect Secret blocks) by their values.
    A block that is missing, unreadable or empty is one error line naming the field and the block."""
    names = {ref.prefect_secret for ref in secret_refs(settings) if ref.prefect_secret}
    values: dict[str, str | SecretNotFound] = {}
    for name in names:
        values[name] = await _read_secret_block(name)

    def lookup(name: str) -> str:
        value = values[name]
        if isinstance(value, SecretNotFound):
            raise value
        return value

    return resolve_secrets(settings, prefect_secret=lookup)


async def _read_secret_block(name: str) -> str | SecretNotFound:
    try:
        secret = await Secret.aload(name)
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        if "Unable to find" in str(exc):
            return SecretNotFound(f"Prefect Secret block {name!r} does not exist")
        return SecretNotFound(f"Prefect Secret block {name!r} cannot be read ({type(exc).__name__})")
    except Exception as exc:  # the API unreachable, another block type under that name, ...
        return SecretNotFound(f"Prefect Secret block {name!r} cannot be read ({type(exc).__name__})")
    value = secret.get()
    return value if isinstance(value, str) else json.dumps(value)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    uuids = params.get("project_uuids") or ([params["project_uuid"]] if params.get("project_uuid") else [])
    settings = params.get("settings")
    if not uuids and settings is not None:
        if isinstance(settings, dict):
            uuids = settings.get("source", {}).get("project_uuid") or []
        else:
            uuids = settings.project_uuids
        uuids = uuids if isinstance(uuids, list) else [uuids]
    owner = params.get("source_owner_user_id") or getattr(getattr(settings, "source", None), "owner_user_id", None)
    if not uuids and owner is not None:
        return f"migrate-projects-of-user-{owner}"
    first = str(uuids[0])[:8] if uuids else "projects"
    return f"migrate-{first}" + (f"-and-{len(uuids) - 1}-more" if len(uuids) > 1 else "")


@flow(name="migrate-project", flow_run_name=_run_name, log_prints=False)
async def migrate_project(
    settings: MigrationSettings | None = None,
    project_uuid: UUID | None = None,
    project_uuids: list[UUID] | None = None,
    source_owner_user_id: int | None = None,
    destination_user_id: int | None = None,
    product_name: str | None = None,
    include_hidden: bool | None = None,
    dry_run: bool | None = None,
    uuid_policy: UuidPolicy | None = None,
    copy_label: str | None = None,
    options: MigrationOptions | None = None,
    source: str | None = None,
    destination: str | None = None,
) -> MigrationReport:
    """Migrate one project (or several) with its files from a source to a destination deployment.

    Args:
        settings: both deployments and the options, for a local call (the CLI, Python); a deployment
            run is refused if it gives them (its connections are its blocks: ``source``, ``destination``).
        project_uuid: the project to move (overrides the settings).
        project_uuids: several projects in one run.
        source_owner_user_id: move every non-trashed project of this source user.
        destination_user_id: the destination user who will own the projects.
        product_name: the destination product (default: each project's own).
        include_hidden: also move hidden job projects created from these projects.
        dry_run: print the plan, write nothing.
        uuid_policy: keep the source's ids, or give the copy new ones.
        copy_label: with uuid_policy=new, names the copy (the same label resumes it; another makes another copy).
        options: migration options (see the README's configuration reference: copy_concurrency, ...).
        source: the OsparcDeployment block of the source (fixed by the deployment).
        destination: the OsparcDeployment block of the destination (fixed by the deployment).
    """
    logger = get_run_logger()
    settings = await run_settings(settings, source, destination, destination_user_id, options)
    settings = settings.with_overrides(
        project_uuids=([project_uuid] if project_uuid else []) + list(project_uuids or []),
        source_owner_user_id=source_owner_user_id,
        destination_user_id=destination_user_id,
        product_name=product_name,
        include_hidden=include_hidden,
        dry_run=dry_run,
        uuid_policy=uuid_policy,
        copy_label=copy_label,
    )
    settings.require_something_to_move("parameters")
    settings = await resolve_credentials(settings)
    if settings.options.dry_run:
        return await _migrate(settings, logger)
    # one run of these projects at a time: the preflight locks them, the lock is held to the end
    async with steps.holding_locks(settings):
        return await _migrate(settings, logger)


async def _migrate(settings: MigrationSettings, logger: Any) -> MigrationReport:
    timer = _Timer()
    with timer("preflight"):
        checked = await tasks.preflight(settings, probe_write=not settings.options.dry_run)
    if checked.already_migrated:
        logger.info("already in the destination from an earlier run: %s", ", ".join(checked.already_migrated))
    if not settings.options.dry_run:
        logger.info(checked.verification.describe())
        if settings.options.verification == "auto":  # what the probes chose, for every copy task run
            settings = settings.model_copy(update={"options": settings.options.model_copy(
                update={"verification": checked.verification.method})})
    with timer("graph"):
        # the destination is listed while the source graph is read (each side's servers at once)
        listing = None if settings.options.dry_run else tasks.list_destination(
            settings, steps.destination_prefixes(checked)
        )
        graph, listed = await asyncio.gather(tasks.read_graph(settings, checked), listing or _none())
        plan = tasks.plan(quote(graph), checked)
    for line in plan.summary_lines():
        logger.info(line)

    if settings.options.dry_run:
        report = MigrationReport.from_plan(plan, "dry-run")
        report.seconds = timer.seconds
        await _publish(report)
        logger.info(report.headline())
        return report

    report = MigrationReport.from_plan(plan, "migrated")
    report.verification = checked.verification.describe()
    if checked.already_migrated:  # frozen: compared read-only, nothing of them written or deleted
        plan = await _leave_migrated(settings, plan, checked.already_migrated, listed, report, logger)
        if not plan.projects:
            report.status = "already-migrated"
            report.seconds = timer.seconds
            await _publish(report)
            logger.info(report.headline())
            return report
    if len(checked.roots) > 1:  # each root project's graph in its own transaction: see flows/many.py
        return await migrate_each(settings, plan, report, timer, logger)
    try:
        # timed inside: "copy" (compare + copy task runs), "verify" (the listing after them)
        outcomes, verified = await _copy_and_verify(settings, plan.copies, report, logger, timer, listed)
        with timer("insert"):
            inserted = await tasks.insert_rows(settings, quote(plan), quote(verified))
    except ProjmigError as exc:
        if isinstance(exc, TransferError) and exc.transient:
            logger.warning(
                "network or server trouble: unfinished multipart uploads are kept so that a rerun continues "
                "them (or run `projmig cleanup` to abort them)"
            )
        else:
            aborted = await tasks.abort_uploads(settings, plan.copies)
            if aborted:
                logger.info("aborted %d unfinished multipart uploads", len(aborted))
        raise

    # uploads of ours that an earlier, different attempt left behind (e.g. another part layout)
    await tasks.abort_uploads(settings, plan.copies)
    report.rows_inserted = inserted.inserted
    report.already_present += inserted.already_present
    report.count_objects(outcomes)
    if report.verified_by:
        logger.info(report.verified_line())
    if report.objects_copied == 0 and inserted.rows == 0:
        report.status = "already-migrated"
    for table, columns in inserted.dropped_columns.items():
        report.warnings.append(f"{table}: source columns not in the destination, left out: {', '.join(columns)}")
    report.seconds = timer.seconds
    await _publish(report)
    logger.info(report.headline())
    return report


async def _leave_migrated(
    settings: MigrationSettings, plan: MigrationPlan, migrated: list[str],
    listed: dict[str, dict[str, ObjectState]] | None, report: MigrationReport, logger: Any,
) -> MigrationPlan:
    """Projects an earlier run inserted belong to the destination's users now: none of their objects
    is copied, overwritten or deleted, none of their rows touched. Their objects are compared with
    the source (read-only, from the listing taken) to say what differs; the uploads this migration
    left open for them (:mod:`projmig.marks`) are aborted. Returns the plan of the other projects."""
    frozen = set(migrated)
    logger.info("already migrated by an earlier run, left as they are: %s", ", ".join(migrated))
    report.already_present = [p.dst_uuid for p in plan.projects if p.dst_uuid in frozen]
    theirs = plan.subset(frozen)
    _, differing = await tasks.compare(settings, quote(theirs.copies), quote(listed))
    by_project: dict[str, list[tuple[ObjectCopy, ObjectState | None]]] = {}
    for copy, state in differing:
        by_project.setdefault(copy.dst_key.split("/", 1)[0], []).append((copy, state))
    for project in theirs.projects:
        if project.dst_uuid in by_project:
            found = by_project[project.dst_uuid]
            copy, state = found[0]
            what = "missing" if state is None else f"{state.size} bytes, ETag {state.etag}"
            report.warnings.append(
                f"{project.dst_uuid} (already migrated, left as it is): {len(found)} of {project.objects} objects differ "
                f"from the source, e.g. {copy.dst_key} ({what}; source {copy.size} bytes, ETag {copy.etag})"
            )
    await tasks.abort_uploads(settings, theirs.copies)
    return plan.subset({p.dst_uuid for p in plan.projects} - frozen)


async def run_settings(
    settings: MigrationSettings | None, source: str | None, destination: str | None,
    destination_user_id: int | None, options: MigrationOptions | None, *, owner_required: bool = True,
) -> MigrationSettings:
    """The settings of a flow run: ``settings`` as given in a local call; in a deployment run, the
    deployment's own blocks and options, after refusing a run that names any connection of its own
    (before anything is loaded or connected)."""
    from prefect.context import FlowRunContext

    chosen = options.model_dump(exclude_unset=True) if options is not None else {}
    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is not None and flow_run.deployment_id is not None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            deployment = await client.read_deployment(flow_run.deployment_id)
        name = f"{context.flow.name}/{deployment.name}"  # type: ignore[union-attr]
        refuse_connections(flow_run.parameters, deployment.parameters, name)
        chosen = merged_options(flow_run.parameters, deployment.parameters)
    elif settings is not None:
        return settings
    if source is None or destination is None:
        raise ConfigError("give settings (a local call) or source and destination (OsparcDeployment block names)")
    if destination_user_id is None and owner_required:
        raise ConfigError("destination_user_id: give the destination user who will own the projects")
    src, dst = await load_deployment_block(source, "source"), await load_deployment_block(destination, "destination")
    try:
        return MigrationSettings.model_validate({
            "source": {"db": src.db, "s3": src.s3},
            "destination": {"db": dst.db, "s3": dst.s3, "user_id": destination_user_id or 0},
            "options": chosen,
        })
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "parameters")) from None


@dataclass
class _CopyRunner:
    submit: Callable[..., Any] | None  # (task, **parameters) -> PrefectFuture; None: in the flow's event loop
    remote: bool  # task runs in other processes: their byte counts do not reach this process's listeners


@contextmanager
def _copy_runner(options: MigrationOptions, logger: Any) -> Iterator[_CopyRunner]:
    """Where copy task runs execute: in the flow's process, concurrently in its event loop (sharing
    one pair of clients and the copy limits: ``steps.shared_copy``), or on a Dask cluster
    (``options.task_runner = "dask"``: a running scheduler at ``dask_address``, else a local cluster of
    ``dask_workers`` processes, started at the first submitted task and stopped with the flow run)."""
    if options.task_runner != "dask":
        yield _CopyRunner(submit=None, remote=False)
        return
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("options.task_runner is 'dask' but prefect-dask is not installed: pip install 'projmig[dask]'") from None
    if options.dask_address:
        runner = DaskTaskRunner(address=options.dask_address)
        logger.info("copy task runs go to the Dask scheduler at %s", options.dask_address)
    else:
        threads = max(1, -(-options.task_concurrency // options.dask_workers))
        runner = DaskTaskRunner(cluster_kwargs={
            "n_workers": options.dask_workers, "threads_per_worker": threads, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None,
        })
        logger.info("copy task runs go to a local Dask cluster of %d processes", options.dask_workers)
    with runner:
        yield _CopyRunner(submit=lambda task, **parameters: runner.submit(task, parameters), remote=True)


async def _copy(settings: MigrationSettings, copies: list, report: MigrationReport, logger: Any) -> list[CopyOutcome]:
    """Copy what the destination lacks (several projects: flows/many.py verifies per project)."""
    with _copy_runner(settings.options, logger) as runner:
        outcomes, _ = await _copy_on(runner, settings, copies, report, logger, _Timer(), strict=False)
    return outcomes


async def _copy_and_verify(
    settings: MigrationSettings, copies: list, report: MigrationReport, logger: Any, timer: _Timer,
    listed: dict[str, dict[str, ObjectState]] | None = None,
) -> tuple[list[CopyOutcome], dict[str, ObjectState]]:
    """Copy what the destination lacks, then verify every object: (outcomes, key -> verified state).
    ``listed``: the destination's listings taken in this run before (what is there already)."""
    with _copy_runner(settings.options, logger) as runner:
        return await _copy_on(runner, settings, copies, report, logger, timer, listed=listed)


async def _none() -> None:
    return None


async def _copy_on(
    runner: _CopyRunner, settings: MigrationSettings, copies: list, report: MigrationReport, logger: Any,
    timer: _Timer, *, strict: bool = True, listed: dict[str, dict[str, ObjectState]] | None = None,
) -> tuple[list[CopyOutcome], dict[str, ObjectState]]:
    """Copy what the destination lacks; then list the destination again: that listing verifies every
    planned object (size and ETag), and what still differs (a cached task result can be stale if
    someone deleted the objects since) is copied once more. ``strict``: fail if anything still
    differs after that (VerificationError), else return what is there."""
    opts = settings.options
    started = time.monotonic()
    total_bytes = sum(c.size for c in copies)
    there, todo = await tasks.compare(settings, quote(copies), quote(listed))
    outcomes = list(there)
    if there:
        logger.info("%d objects (%s) already in the destination", len(there), human_bytes(sum(o.size for o in there)))
    report_total(len(todo), sum(c.size for c, _ in todo))
    if not todo:  # that listing, taken in this run, saw every object with its source's size and ETag
        timer.add("verify", time.monotonic() - started)
        return outcomes, verified_states(there, [], len(copies))
    timer.add("copy", time.monotonic() - started)
    progress = await create_progress_artifact(progress=0.0, key="projmig-copy", description="copying objects")
    for attempt in (1, 2):
        started = time.monotonic()
        done_bytes = sum(o.size for o in there)  # counted again from what the last listing saw
        if attempt == 2:
            report_total(len(todo), sum(c.size for c, _ in todo))
        batches = batch_transfers(
            todo, large=opts.multipart_threshold, max_files=opts.batch_max_files, max_bytes=opts.batch_max_bytes
        )
        report.copy_task_runs += len(batches)
        logger.info("copying %d objects (%s) in %d task runs", len(todo), human_bytes(sum(c.size for c, _ in todo)), len(batches))
        share = min(opts.task_concurrency, len(batches))
        copy_task = tasks.copy_objects if attempt == 1 else tasks.copy_objects.with_options(refresh_cache=True)
        failures: list[BaseException] = []
        copied: list[CopyOutcome] = []
        async with aclosing(_run_copies(runner, copy_task, settings, batches, share, failures)) as finished:
            async for result in finished:
                copied += result
                done_bytes += sum(o.size for o in result)
                if runner.remote:
                    report_bytes(sum(o.size for o in result))
                pct = 100.0 * done_bytes / max(1, total_bytes)
                await update_progress_artifact(
                    progress, progress=pct,
                    description=f"{len(outcomes) + len(copied)}/{len(copies)} objects, "
                    f"{human_bytes(done_bytes)}/{human_bytes(total_bytes)} ({pct:.0f}%)",
                )
        timer.add("copy", time.monotonic() - started)
        if failures:
            raise failures[0]
        with timer("verify"):
            there, todo = await tasks.compare(settings, quote(copies))
        differing = {c.dst_key for c, _ in todo}
        outcomes += [o for o in copied if o.dst_key not in differing]
        if not todo:
            break
        if attempt == 1:
            logger.warning("%d objects still differ from their source after copying: copying them again", len(todo))
    if not strict:
        return outcomes, {o.dst_key: ObjectState(size=o.size, etag=o.etag) for o in there}
    return outcomes, verified_states(there, todo, len(copies))


async def _run_copies(
    runner: _CopyRunner, copy_task: Any, settings: MigrationSettings, batches: list, share: int,
    failures: list[BaseException],
) -> AsyncIterator[list[CopyOutcome]]:
    """Each copy task run's outcomes as it finishes; failures are collected, not raised, so that
    what the other task runs copy is kept."""
    if runner.submit is not None:
        futures = [runner.submit(copy_task, settings=settings, batch=batch, share=share) for batch in batches]
        for future in as_completed(futures):
            try:
                yield future.result()
            except BaseException as exc:
                failures.append(exc)
        return
    runs = asyncio.Semaphore(settings.options.task_concurrency)

    async def one(batch: list) -> list[CopyOutcome]:
        async with runs:
            return await copy_task(settings=settings, batch=batch, share=share)

    async with steps.shared_copy(settings):
        pending = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            for next_done in asyncio.as_completed(pending):
                try:
                    yield await next_done
                except Exception as exc:
                    failures.append(exc)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def _publish(report: MigrationReport) -> None:
    await create_table_artifact(key="projmig-projects", table=report.project_rows(), description=report.headline())
    await create_markdown_artifact(key="projmig-report", markdown=report.to_markdown(), description=report.headline())


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(stage, time.monotonic() - started)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + seconds, 3)
