"""The pipeline's steps as the flows run them (:class:`TaskSteps`): each library step as its Prefect
task (``flows/tasks.py``), the copies on the flow's copy runner (``flows/runners.py``), and what a run
says as it goes as Prefect shows it: the run's logger, a progress artifact while copying, the report
as artifacts at the end (``flows/artifacts.py``), the bytes to this process's listeners (the CLI's
progress bar: ``flows/progress.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.utilities.annotations import quote

from projmig.buckets import ObjectState
from projmig.copier import CopyOutcome
from projmig.insert import Confirm, RootInsert
from projmig.pipeline import Steps
from projmig.plan import MigrationPlan, ObjectCopy
from projmig.report import MigrationReport
from projmig.rollback import RollbackResult
from projmig.run import MigrationRun
from projmig.steps import Batch, Listed, Survey
from projmig.units import human_bytes

from . import tasks
from .artifacts import publish_report, publish_rollback
from .progress import report_bytes, report_total
from .runners import CopyRunner


class TaskSteps(Steps):
    """Use as a context manager: a Dask cluster its copies started is stopped when it ends."""

    def __init__(self, logger: Any):
        super().__init__(logger)
        self.runner = CopyRunner(logger)
        self._progress: UUID | None = None

    def __enter__(self) -> TaskSteps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.close()

    # Few task runs (each costs tens of milliseconds of orchestration): the survey (the preflight, the
    # source's graph, the write probe, the destination's listings and the plan in one), the copy
    # batches (the only ones cached: the checkpoints a rerun skips), the listing that verifies the
    # copies, one insert per account. Comparing with a listing already taken and aborting leftover
    # uploads are plain calls.
    # Large values (graphs, plans, listings) are quoted: Prefect would otherwise walk each for futures.

    async def survey(self, run: MigrationRun, *, probe_write: bool) -> Survey:
        return await tasks.survey(run, probe_write=probe_write)

    async def compare(
        self, run: MigrationRun, copies: list[ObjectCopy], listed: Listed | None = None
    ) -> tuple[list[CopyOutcome], Batch]:
        if listed is not None:  # a listing of this run: compared in memory
            return await super().compare(run, copies, listed)
        return await tasks.compare(run, quote(copies))

    async def copy_batches(
        self, run: MigrationRun, batches: list[Batch], *, again: bool
    ) -> AsyncIterator[list[CopyOutcome] | Exception]:
        # the second pass is over objects that differ although a copy said it was done: not from cache
        task = tasks.copy_objects.with_options(refresh_cache=True) if again else tasks.copy_objects
        async for result in self.runner.run(run, task, batches):
            yield result

    async def insert_roots(
        self, run: MigrationRun, plan: MigrationPlan, verified: dict[str, ObjectState], roots: list[str],
        confirm: Confirm | None = None,
    ) -> list[RootInsert]:
        owner = next((p.owner_id for p in plan.projects if p.src_uuid in roots), None)
        named = tasks.insert_rows.with_options(task_run_name=f"insert {len(roots)} projects of user {owner}") \
            if plan.projects and len({p.owner_id for p in plan.projects}) > 1 else tasks.insert_rows
        # (an async task runs in the flow's event loop: ``confirm`` awaits the flow's listing there)
        return await named(run, quote(plan), quote(verified), roots, quote(confirm))


    async def rollback_rows(self, run: MigrationRun, *, dry_run: bool) -> RollbackResult:
        return await tasks.rollback_rows(run, dry_run=dry_run)

    async def rollback_objects(self, run: MigrationRun, result: RollbackResult) -> RollbackResult:
        return await tasks.rollback_objects(run, result)

    async def copying(self, objects: int, nbytes: int) -> None:
        report_total(objects, nbytes)
        if self._progress is None:
            self._progress = await create_progress_artifact(progress=0.0, key="projmig-copy", description="copying objects")

    async def copied(self, outcomes: list[CopyOutcome], done: int, total: int, done_bytes: int, total_bytes: int) -> None:
        if self.runner.remote:
            report_bytes(sum(o.size for o in outcomes))
        if self._progress is not None:
            pct = 100.0 * done_bytes / max(1, total_bytes)
            await update_progress_artifact(
                self._progress, progress=pct,
                description=f"{done}/{total} objects, {human_bytes(done_bytes)}/{human_bytes(total_bytes)} ({pct:.0f}%)",
            )

    async def publish(self, report: MigrationReport) -> None:
        await publish_report(report)

    async def publish_rollback(self, result: RollbackResult) -> None:
        await publish_rollback(result)
