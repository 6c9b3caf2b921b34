"""The ``rollback-migration`` flow: remove from the destination what a migration inserted.

Two tasks (``flows/tasks.py``), each a library step: ``rollback-rows`` recomputes the migration's plan
from the source, checks in one destination transaction that its projects are unchanged since the
migration and deletes their rows (refusing, with nothing removed, otherwise: see
:mod:`projmig.rollback` for the rule); ``rollback-objects`` then deletes the migration's objects.
A markdown artifact ``projmig-rollback`` says what was removed.

Run it locally with the migration's own settings::

    from flows.rollback import rollback_migration
    result = rollback_migration(settings)                 # or: await rollback_migration(settings)
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger

from projmig import steps
from projmig.rollback import RollbackResult
from projmig.settings import MigrationOptions, MigrationSettings, UuidPolicy

from . import tasks
from .artifacts import publish_rollback
from .credentials import flow_run_settings


@flow(name="rollback-migration", log_prints=False)
async def rollback_migration(
    settings: MigrationSettings | None = None,
    project_uuid: UUID | None = None,
    project_uuids: list[UUID] | None = None,
    source_owner_user_id: int | None = None,
    include_hidden: bool | None = None,
    uuid_policy: UuidPolicy | None = None,
    copy_label: str | None = None,
    dry_run: bool = False,
    options: MigrationOptions | None = None,
    source: str | None = None,
    destination: str | None = None,
) -> RollbackResult:
    """Remove from the destination what the migration with these settings inserted (rows in one
    transaction, then objects); refuse, removing nothing, if a destination project changed since.

    Args:
        settings: the migration's settings (the same as for migrate-project).
        project_uuid: the migrated project (overrides the settings).
        project_uuids: several migrated projects.
        source_owner_user_id: the migration moved every project of this source user.
        include_hidden: the migration moved the hidden job projects too.
        uuid_policy: the policy the migration ran with.
        copy_label: with uuid_policy=new, the label of the copy to remove.
        dry_run: show what would be removed, remove nothing.
        options: the migration's options (as for migrate-project).
        source: the OsparcDeployment block of the source (fixed by the deployment).
        destination: the OsparcDeployment block of the destination (fixed by the deployment).
    """
    logger = get_run_logger()
    settings = await flow_run_settings(
        settings, source=source, destination=destination, options=options,
        owner_required=False,  # the destination owner plays no part in a rollback
        project_uuids=([project_uuid] if project_uuid else []) + list(project_uuids or []),
        source_owner_user_id=source_owner_user_id,
        include_hidden=include_hidden,
        uuid_policy=uuid_policy,
        copy_label=copy_label,
    )

    async with steps.holding_locks(settings):  # no migration of these projects meanwhile (projmig/locks.py)
        result = await tasks.rollback_rows(settings, dry_run=dry_run)
        if not dry_run and not result.nothing:
            result = await tasks.rollback_objects(settings, result)
    for line in result.summary_lines():
        logger.info(line)
    await publish_rollback(result)
    logger.info(result.headline())
    return result
