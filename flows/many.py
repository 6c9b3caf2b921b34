"""Several root projects in one flow run (``project_uuids`` or ``owner_user_id``).

What stays shared, so that many projects cost no more task runs than one big one: one preflight,
one graph, one plan, the copy batches (files of all projects batched together, bounded by count and
bytes) and one listing to verify them. What is per root project (the root and its hidden children):
whether all of its objects arrived, and its rows, inserted in a transaction of its own
(``options.project_concurrency`` at once, inside one task run). A project whose objects failed to copy,
or whose transaction failed, is reported with the reason and does not hold back or roll back the
others; a rerun skips what is there (objects by listing, projects by uuid + creation date) and
finishes the rest. Every root failing fails the flow run; some failing ends it as ``partial``.
"""

from __future__ import annotations

from typing import Any

from prefect.utilities.annotations import quote

from projmig.errors import ProjmigError, TransferError
from projmig.buckets import ObjectState
from projmig.plan import MigrationPlan
from projmig.report import MigrationReport, StageTimer
from projmig.settings import MigrationSettings

from . import tasks
from .artifacts import publish_report
from .copying import copy_missing


async def migrate_each(
    settings: MigrationSettings, plan: MigrationPlan, report: MigrationReport, timer: StageTimer, logger: Any
) -> MigrationReport:
    """Copy, verify and insert the plan's root projects, each with its own outcome (module docstring);
    the flow ``migrate-project`` calls this after its preflight, graph and plan."""
    groups = plan.roots()
    copy_error: Exception | None = None
    with timer("copy"):
        try:
            outcomes = await copy_missing(settings, plan.copies, report, logger)
        except Exception as exc:  # what the other batches copied is kept; decided per project below
            copy_error, outcomes = exc, None
            logger.error("copying failed: %s", exc)
    with timer("verify"):
        there, missing = await tasks.compare(settings, plan.copies)
    verified = {o.dst_key: ObjectState(size=o.size, etag=o.etag) for o in there}
    missing_keys = {c.dst_key for c, _ in missing}

    failed: dict[str, str] = {}
    ready: list[str] = []
    for root, projects in groups.items():
        own = {p.dst_uuid for p in projects}
        lacking = sorted(k for k in missing_keys if k.split("/", 1)[0] in own)
        if not lacking:
            ready.append(root)
            continue
        cause = f": {copy_error}" if copy_error is not None else ""
        failed[root] = f"{len(lacking)} objects not copied (e.g. {lacking[0]}){cause}"
    failed_keys = {k for k in missing_keys if any(k.split("/", 1)[0] in {p.dst_uuid for p in groups[r]} for r in failed)}
    if failed_keys:
        if isinstance(copy_error, TransferError) and copy_error.transient:
            logger.warning("unfinished multipart uploads of the failed projects are kept for a rerun to continue")
        else:
            await tasks.abort_uploads(settings, [c for c in plan.copies if c.dst_key in failed_keys])

    with timer("insert"):
        results = await tasks.insert_rows_each(settings, quote(plan), verified, ready) if ready else []
    for result in results:
        if result.error is not None:
            failed[result.root] = result.error
            continue
        assert result.result is not None
        report.count_inserted(result.result)
    # leftovers of earlier, different attempts
    await tasks.abort_uploads(settings, [c for c in plan.copies if c.dst_key not in failed_keys])

    if outcomes is not None:
        report.count_objects(outcomes)
    else:  # which objects this run copied is not known
        report.count_present(there, len(plan.copies))
    report.failed = {root: failed[root] for root in groups if root in failed}
    for root, why in report.failed.items():
        logger.error("project %s not migrated: %s", root, why)
    report.conclude(timer.seconds, roots=len(groups))
    await publish_report(report)
    logger.info(report.headline())
    if report.status == "failed":
        raise ProjmigError(report.headline())
    return report
