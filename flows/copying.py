"""Copying a plan's objects and proving they arrived, for both migration flows (one project:
``flows/migrate.py``; several: ``flows/many.py``).

What the destination already holds is found by one listing (taken before, or here); the rest moves
in copy task runs of one large object or a batch of small ones (``flows/runners.py`` runs them);
then a second listing verifies every planned object (size and ETag, or projmig's mark), and what
still differs is copied once more. Progress goes to a Prefect progress artifact and to this
process's listeners (``flows/progress.py``).
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.utilities.annotations import quote

from projmig.buckets import ObjectState
from projmig.copier import CopyOutcome
from projmig.objects import batch_transfers
from projmig.report import MigrationReport, StageTimer
from projmig.settings import MigrationSettings
from projmig.units import human_bytes
from projmig.verify import verified_states

from . import tasks
from .progress import report_bytes, report_total
from .runners import CopyRunner, copy_runner, run_copies

Listed = dict[str, dict[str, ObjectState]]  # prefix -> key -> state: a destination listing taken before


async def copy_and_verify(
    settings: MigrationSettings, copies: list, report: MigrationReport, logger: Any, timer: StageTimer,
    listed: Listed | None = None,
) -> tuple[list[CopyOutcome], dict[str, ObjectState]]:
    """Copy what the destination lacks, then verify every object: (outcomes, key -> verified state);
    a difference left is a ``VerificationError``. ``listed``: the destination's listings taken in
    this run before (what is there already). Timed as "copy" and "verify"."""
    with copy_runner(settings.options, logger) as runner:
        return await _copy_on(runner, settings, copies, report, logger, timer, listed=listed)


async def copy_missing(settings: MigrationSettings, copies: list, report: MigrationReport, logger: Any) -> list[CopyOutcome]:
    """Copy what the destination lacks, copying again once what still differs after that, and
    return what was copied or already there; what is still missing is left for the caller to find
    (several projects: ``flows/many.py`` decides per project)."""
    with copy_runner(settings.options, logger) as runner:
        outcomes, _ = await _copy_on(runner, settings, copies, report, logger, StageTimer(), strict=False)
    return outcomes


async def _copy_on(
    runner: CopyRunner, settings: MigrationSettings, copies: list, report: MigrationReport, logger: Any,
    timer: StageTimer, *, strict: bool = True, listed: Listed | None = None,
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
        async with aclosing(run_copies(runner, copy_task, settings, batches, share, failures)) as finished:
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
