"""The ``rollback-migration`` flow: remove from the destination what a migration inserted, with the
library's one rollback (:func:`projmig.pipeline.rollback`) and its two steps as Prefect tasks:
``rollback-rows`` recomputes the migration's plan from the source, checks in one destination transaction
that its projects are unchanged since the migration and deletes their rows (refusing, with nothing
removed, otherwise: :mod:`projmig.rollback` gives the rule); ``rollback-objects`` then deletes the
migration's objects. A markdown artifact ``projmig-rollback`` says what was removed.

Run it locally with the migration's own settings::

    import asyncio
    from flows.rollback import rollback_migration
    result = asyncio.run(rollback_migration(settings))
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from projmig import pipeline
from projmig.rollback import RollbackResult
from projmig.run import MigrationRun
from projmig.settings import HostSettings, MigrationOptions, MigrationSettings

from .credentials import flow_run_settings
from .parameters import taking_choices
from .steps import TaskSteps


@flow(name="rollback-migration", log_prints=False)
@taking_choices(rollback=True)
async def rollback_migration(
    settings: MigrationSettings | None = None,
    choices: dict[str, Any] | None = None,
    *,
    options: MigrationOptions | None = None,
    host: HostSettings | None = None,
    source: str | None = None,
    destination: str | None = None,
) -> RollbackResult:
    """Remove from the destination what the migration with these choices inserted (rows in one
    transaction, then objects); refuse, removing nothing, if a destination project changed since.

    Args:
        settings: the migration's settings (as for migrate-project), for a local call.
        options: the migration's options (as for migrate-project).
        host: the host's resources (osparc's migrations, a staging server, a Dask scheduler) of a local call
            naming blocks; a deployment's are its ProjmigHost block's (host_block), and its runs give none.
        source: the OsparcDeployment block of the source; fixed by the deployment.
        destination: the OsparcDeployment block of the destination; fixed by the deployment.
    """
    settings = await flow_run_settings(
        settings, choices or {}, source=source, destination=destination, options=options, host=host,
        owner_required=False,  # the destination owner plays no part in a rollback
    )
    dry_run = settings.choices.dry_run
    # no migration of these projects meanwhile (projmig/locks.py)
    async with MigrationRun.open(settings, lock=not dry_run) as run:
        with TaskSteps(get_run_logger()) as steps:
            return await pipeline.rollback(run, steps, dry_run=dry_run)
