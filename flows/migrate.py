"""The ``migrate-project`` flow: the library's pipeline (:mod:`projmig.pipeline`) with each step a
Prefect task (``flows/steps.py``), on a run opened here from the settings of a local call or of a
deployment's blocks (``flows/credentials.py``).

Run it locally (the flow is async: ``await`` it in async code)::

    import asyncio
    from flows.migrate import migrate_project
    report = asyncio.run(migrate_project(settings))
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from projmig import pipeline
from projmig.report import MigrationReport
from projmig.run import MigrationRun
from projmig.settings import HostSettings, MigrationOptions, MigrationSettings

from .credentials import flow_run_settings
from .naming import migration_run_name
from .parameters import taking_choices
from .steps import TaskSteps


@flow(name="migrate-project", flow_run_name=migration_run_name, log_prints=False)
@taking_choices()
async def migrate_project(
    settings: MigrationSettings | None = None,
    choices: dict[str, Any] | None = None,
    *,
    options: MigrationOptions | None = None,
    host: HostSettings | None = None,
    source: str | None = None,
    destination: str | None = None,
) -> MigrationReport:
    """Migrate osparc-simcore projects with their files from a source to a destination deployment.

    Args:
        settings: both deployments, the choices and the options, for a local call (the CLI, Python); a
            deployment run is refused if it gives them (its connections are its blocks).
        options: how the migration runs (docs/configuration.md: copy_concurrency, ...).
        host: the host's resources (osparc's migrations, a staging server, a Dask scheduler) of a local call
            naming blocks; a deployment's are its ProjmigHost block's (host_block), and its runs give none.
        source: the OsparcDeployment block of the source; fixed by the deployment.
        destination: the OsparcDeployment block of the destination; fixed by the deployment.
    """
    settings = await flow_run_settings(
        settings, choices or {}, source=source, destination=destination, options=options, host=host
    )
    logger = get_run_logger()
    # a run that writes holds its projects' locks from its preflight to its end: one run of them at a time
    async with MigrationRun.open(settings, lock=not settings.choices.dry_run) as run:
        with TaskSteps(logger) as steps:
            return await pipeline.migrate(run, steps)
