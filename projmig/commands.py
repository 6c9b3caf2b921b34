"""The library's commands, without Prefect: each takes settings, resolves their credentials, opens the
run (:class:`projmig.run.MigrationRun`, locking its projects when it writes), runs, and closes it.
What ``projmig plan|migrate|verify|cleanup|rollback`` do, for Python callers and measurements::

    import asyncio
    from projmig import commands
    from projmig.settings import MigrationSettings

    report = asyncio.run(commands.migrate(MigrationSettings.load("cfg.json")))
    print(report.headline())

A reference to a Prefect Secret block cannot be resolved here (the flows and the CLI can).
"""

from __future__ import annotations

from datetime import timedelta

from . import pipeline, steps
from .plan import MigrationPlan
from .preflight import PreflightReport
from .report import MigrationReport
from .rollback import RollbackResult
from .run import MigrationRun
from .settings import MigrationSettings, resolve_secrets
from .verify import VerifyReport


async def migrate(settings: MigrationSettings, with_steps: pipeline.Steps | None = None) -> MigrationReport:
    """Migrate the projects of the settings' choices (:func:`projmig.pipeline.migrate`); a dry run
    takes no locks."""
    settings = resolve_secrets(settings)
    async with MigrationRun.open(settings, lock=not settings.choices.dry_run) as run:
        return await pipeline.migrate(run, with_steps)


async def rollback(settings: MigrationSettings, with_steps: pipeline.Steps | None = None) -> RollbackResult:
    """Remove what the migration with these settings inserted (``choices.dry_run``: say what)."""
    settings = resolve_secrets(settings)
    dry_run = settings.choices.dry_run
    async with MigrationRun.open(settings, lock=not dry_run) as run:
        return await pipeline.rollback(run, with_steps, dry_run=dry_run)


async def plan(settings: MigrationSettings) -> tuple[PreflightReport, MigrationPlan]:
    """The preflight and the plan; writes nothing."""
    async with MigrationRun.open(resolve_secrets(settings), lock=False) as run:
        return await steps.plan_migration(run)


async def verify(settings: MigrationSettings, *, deep: bool = True) -> VerifyReport:
    """Compare the destination with the source (:func:`projmig.steps.verify_migration`)."""
    async with MigrationRun.open(resolve_secrets(settings), lock=False) as run:
        return await steps.verify_migration(run, deep=deep)


async def cleanup(settings: MigrationSettings, *, older_than: timedelta) -> list[str]:
    """Abort this migration's unfinished uploads older than ``older_than``, holding the projects' locks."""
    async with MigrationRun.open(resolve_secrets(settings), lock=True) as run:
        return await steps.cleanup(run, older_than=older_than)
