"""The ``migrate-project`` flow: preflight -> graph -> plan -> copy -> verify -> insert -> report.

It only orchestrates: every step is a library call (``projmig.steps``) behind a task
(``flows/tasks.py``). The run's settings and credentials come from ``flows/credentials.py``, the
objects move and are verified by ``flows/copying.py`` (what is already in the destination is found by
one listing first, so a rerun after a complete migration maps no copy task at all), several root
projects go on in ``flows/many.py``, and the report becomes artifacts in ``flows/artifacts.py``.

Run it locally::

    from flows.migrate import migrate_project
    report = migrate_project(settings)          # or: await migrate_project(settings)
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from projmig import steps
from projmig.errors import ProjmigError, TransferError
from projmig.buckets import ObjectState
from projmig.plan import MigrationPlan, ObjectCopy
from projmig.report import MigrationReport, StageTimer
from projmig.settings import MigrationOptions, MigrationSettings, UuidPolicy

from . import tasks
from .artifacts import publish_report
from .copying import Listed, copy_and_verify
from .credentials import flow_run_settings
from .many import migrate_each
from .naming import migration_run_name


@flow(name="migrate-project", flow_run_name=migration_run_name, log_prints=False)
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
    settings = await flow_run_settings(
        settings, source=source, destination=destination, options=options,
        project_uuids=([project_uuid] if project_uuid else []) + list(project_uuids or []),
        source_owner_user_id=source_owner_user_id,
        destination_user_id=destination_user_id,
        product_name=product_name,
        include_hidden=include_hidden,
        dry_run=dry_run,
        uuid_policy=uuid_policy,
        copy_label=copy_label,
    )
    if settings.options.dry_run:
        return await _migrate(settings, logger)
    # one run of these projects at a time: the preflight locks them, the lock is held to the end
    async with steps.holding_locks(settings):
        return await _migrate(settings, logger)


async def _migrate(settings: MigrationSettings, logger: Any) -> MigrationReport:
    timer = StageTimer()
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
            settings, checked.selection.destination_prefixes
        )
        graph, listed = await asyncio.gather(tasks.read_graph(settings, checked), listing or _nothing())
        plan = tasks.plan(quote(graph), checked)
    for line in plan.summary_lines():
        logger.info(line)

    if settings.options.dry_run:
        report = MigrationReport.from_plan(plan, "dry-run")
        report.seconds = timer.seconds
        await publish_report(report)
        logger.info(report.headline())
        return report

    report = MigrationReport.from_plan(plan, "migrated")
    report.verification = checked.verification.describe()
    if checked.already_migrated:  # frozen: compared read-only, nothing of them written or deleted
        plan = await _leave_migrated(settings, plan, checked.already_migrated, listed, report, logger)
        if not plan.projects:
            report.status = "already-migrated"
            report.seconds = timer.seconds
            await publish_report(report)
            logger.info(report.headline())
            return report
    if len(checked.selection.roots) > 1:  # each root project's graph in its own transaction: see flows/many.py
        return await migrate_each(settings, plan, report, timer, logger)
    try:
        # timed inside: "copy" (compare + copy task runs), "verify" (the listing after them)
        outcomes, verified = await copy_and_verify(settings, plan.copies, report, logger, timer, listed)
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
    report.count_inserted(inserted)
    report.count_objects(outcomes)
    if report.verified_by:
        logger.info(report.verified_line())
    report.conclude(timer.seconds)
    await publish_report(report)
    logger.info(report.headline())
    return report


async def _leave_migrated(
    settings: MigrationSettings, plan: MigrationPlan, migrated: list[str],
    listed: Listed | None, report: MigrationReport, logger: Any,
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


async def _nothing() -> None:
    return None
