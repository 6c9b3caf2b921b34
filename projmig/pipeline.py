"""A migration, for one root project or many: preflight -> graph -> plan -> copy -> verify -> insert
-> report, and its undo (:func:`rollback`).

The pipeline takes its steps as a parameter (:class:`Steps`): the library's own are plain calls of
:mod:`projmig.steps`; the ``migrate-project`` flow passes Prefect tasks wrapping the same calls
(``flows/migrate.py``), and so reports each as a task run. Either way the run (its clients, limits,
locks) is one :class:`projmig.run.MigrationRun`, opened by the caller.

**One rule for any number of root projects.** The roots share the preflight, the graph, the plan,
the copy batches (files of all roots batched together) and the listings that verify them. What is a
root's own (the root and its hidden children): whether all of its objects arrived, and its rows,
inserted in a transaction of its own (``options.project_concurrency`` at once). A root whose objects
did not all arrive, or whose transaction failed, does not stop or roll back the others; a rerun skips
what is there (objects by listing, projects by uuid + creation date) and finishes the rest. If any
root failed, the run ends failed: status ``partial`` (some roots failed) or ``failed`` (all did), and
:func:`migrate` raises (:func:`run_failure`) after its report is published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import steps as library
from .buckets import ObjectState
from .copier import CopyOutcome
from .errors import ProjmigError, TransferError, VerificationError
from .insert import Confirm, NotConfirmed, RootInsert
from .marks import project_of
from .objects import batch_transfers
from .plan import MigrationPlan, ObjectCopy
from .preflight import PreflightReport
from .report import MigrationReport, StageTimer
from .rollback import RollbackResult
from .run import MigrationRun
from .steps import Batch, Listed
from .units import human_bytes
from .verify import states_of, verified_states

T = TypeVar("T")


class Steps:
    """The steps :func:`migrate` and :func:`rollback` run, and where they say what they do: the
    library's own, plain calls of :mod:`projmig.steps` (a subclass replaces any of them: the flow's
    runs each as a Prefect task)."""

    def __init__(self, logger: logging.Logger | Any | None = None, on_bytes: Callable[[int], None] | None = None):
        """``on_bytes``: told the bytes of each part or object as it is copied (a progress bar)."""
        self.log = logger or logging.getLogger("projmig")
        self.on_bytes = on_bytes

    async def survey(self, run: MigrationRun, *, probe_write: bool) -> library.Survey:
        """The preflight, the graph, the plan and (``probe_write``: a run that writes) the write probe
        and the destination's listings, overlapped (:func:`projmig.steps.survey`)."""
        return await library.survey(run, probe_write=probe_write)

    async def compare(
        self, run: MigrationRun, copies: list[ObjectCopy], listed: Listed | None = None
    ) -> tuple[list[CopyOutcome], Batch]:
        return await library.compare(run, copies, listed)

    async def copy_batches(
        self, run: MigrationRun, batches: list[Batch], *, again: bool
    ) -> AsyncIterator[list[CopyOutcome] | Exception]:
        """Each batch's outcomes (or its failure) as it finishes, ``options.task_concurrency`` batches
        at once; ``again``: the second pass over what still differed after the first."""
        runs = asyncio.Semaphore(run.settings.options.task_concurrency)

        async def one(batch: Batch) -> list[CopyOutcome]:
            async with runs:
                return await library.copy_objects(run.transfers, batch, self.on_bytes)

        pending = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            for next_done in asyncio.as_completed(pending):
                try:
                    yield await next_done
                except Exception as exc:  # what the other batches copy is kept
                    yield exc
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def insert_roots(
        self, run: MigrationRun, plan: MigrationPlan, verified: dict[str, ObjectState], roots: list[str],
        confirm: Confirm | None = None,
    ) -> list[RootInsert]:
        """``confirm``: asked before each root's COMMIT (:func:`projmig.insert.insert_plan`)."""
        return await library.insert_roots(run, plan, verified, roots, confirm)

    async def abort_uploads(self, run: MigrationRun, copies: list[ObjectCopy]) -> list[str]:
        return await library.abort_our_uploads(run, copies)

    async def rollback_rows(self, run: MigrationRun, *, dry_run: bool) -> RollbackResult:
        return await library.rollback_rows(run, dry_run=dry_run)

    async def rollback_objects(self, run: MigrationRun, result: RollbackResult) -> RollbackResult:
        return await library.rollback_objects(run, result)

    # -- what the run says as it goes (the flow adds its Prefect artifacts) ------------------------

    async def copying(self, objects: int, nbytes: int) -> None:
        """``objects`` objects (``nbytes``) are about to be copied (once more after a second look)."""

    async def copied(self, outcomes: list[CopyOutcome], done: int, total: int, done_bytes: int, total_bytes: int) -> None:
        """A batch finished: ``done`` of ``total`` planned objects are there (``done_bytes`` of ``total_bytes``)."""

    async def publish(self, report: MigrationReport) -> None:
        """The run's report, at its end (also when it failed)."""

    async def publish_rollback(self, result: RollbackResult) -> None:
        """A rollback's result, at its end."""


class MigrationFailed(TransferError):
    """Root projects failed for more than one reason (:func:`run_failure`); ``report`` says which and why."""

    def __init__(self, report: MigrationReport, causes: dict[str, BaseException]):
        self.report, self.causes = report, causes
        reasons = "; ".join(f"project {root}: {why}" for root, why in report.failed.items())
        # a failed run's headline already gives every reason
        super().__init__(report.headline() if report.status == "failed" else f"{report.headline()}: {reasons}",
                         transient=all(getattr(c, "transient", False) for c in causes.values()))


def run_failure(report: MigrationReport, causes: dict[str, BaseException]) -> BaseException:
    """The error a failed run ends with: the one cause when every failed root failed for it (a single
    root, or one copy failure for all), else :class:`MigrationFailed`. Either carries ``report``."""
    distinct = list({id(c): c for c in causes.values()}.values())
    failure = distinct[0] if len(distinct) == 1 else MigrationFailed(report, causes)
    if len(distinct) == 1 and report.status == "partial":
        failure.add_note(report.headline())
    failure.report = report  # type: ignore[attr-defined]
    return failure


async def migrate(run: MigrationRun, steps: Steps | None = None) -> MigrationReport:
    """Migrate the projects of ``run``'s choices (module docstring: the rule for N roots)."""
    steps = steps or Steps()
    log = steps.log
    dry = run.settings.choices.dry_run
    timer = StageTimer()
    # the graph read while the preflight's later checks run; the write probe (the preflight's last
    # check: nothing is copied before it passed) while the destination is listed
    surveyed = await steps.survey(run, probe_write=not dry)
    checked, plan, listed = surveyed.report, surveyed.plan, surveyed.listed
    for stage, seconds in surveyed.seconds.items():
        timer.add(stage, seconds)
    if checked.already_migrated:
        log.info("already in the destination from an earlier run: %s", ", ".join(checked.already_migrated))
    if not dry:
        log.info(checked.verification.describe())
        if run.settings.options.verification == "auto":  # what the probes chose, for every copy
            run.use_verification(checked.verification.method)
    for line in plan.summary_lines():
        log.info(line)
    report = MigrationReport.from_plan(plan, "dry-run" if dry else "migrated")
    for why in checked.selection.skipped.values():
        report.warnings.append(f"skipped (choices.skip_unmatched): {why}")
    if dry:
        _count_users(report, checked)
        return await _end(steps, report, timer)
    report.verification = checked.verification.describe()
    if checked.already_migrated:  # frozen: compared read-only, nothing of them written or deleted
        plan = await _leave_migrated(run, steps, plan, checked.already_migrated, listed, report)
        if not plan.projects:
            report.status = "already-migrated"
            _count_users(report, checked)
            return await _end(steps, report, timer)

    copied = await _copy(run, steps, plan, report, timer, listed)
    groups = plan.roots()
    causes: dict[str, BaseException] = {}
    kept: set[str] = set()  # keys whose unfinished uploads stay for a rerun to continue
    confirming = copied.verifying
    try:
        _fail_lacking(plan, list(groups), copied, causes, kept, report)
        ready = [root for root in groups if root not in causes]
        verified = states_of(copied.there)
        gate = _ListingGate(confirming, verified) if confirming is not None else None
        with timer("insert"):
            inserted = await _insert(run, steps, plan, verified, ready, gate)
        if confirming is not None:
            held = [r.root for r in inserted if isinstance(r.error, NotConfirmed)]
            inserted = [r for r in inserted if not isinstance(r.error, NotConfirmed)]
            listing = await confirming  # (a listing that failed fails the run, as after any copy)
            differing = {c.dst_key for c, _ in listing[1]}  # (of roots whose insert failed, if any)
            copied.outcomes = [o for o in copied.outcomes if o.dst_key not in differing]
            if held:
                log.warning("the destination's listing did not confirm every object as copied: %d projects are "
                            "inserted again from what it shows", len(held))
                copied = await _verify(run, steps, plan.copies, copied.before, copied.copied, None, report, timer,
                                       listing=listing)
                _fail_lacking(plan, held, copied, causes, kept, report)
                verified = states_of(copied.there)
                with timer("insert"):
                    inserted += await _insert(run, steps, plan, verified, [r for r in held if r not in causes], None)
    finally:
        if confirming is not None:  # (an insert that raised: the listing stopped, its outcome taken)
            confirming.cancel()
            await asyncio.gather(confirming, return_exceptions=True)
    if kept:
        log.warning("network or server trouble: unfinished multipart uploads are kept so that a rerun continues "
                    "them (or run `projmig cleanup` to abort them)")
    for result in inserted:
        if result.error is not None:
            causes[result.root] = result.error
            report.failed[result.root] = str(result.error)
        else:
            assert result.result is not None
            report.count_inserted(result.result)
    outcomes = copied.outcomes
    # uploads of ours that this run, or an earlier different attempt (another part layout), left behind
    aborted = await steps.abort_uploads(run, [c for c in plan.copies if c.dst_key not in kept])
    if aborted and causes:
        log.info("aborted %d unfinished multipart uploads", len(aborted))

    report.count_objects(outcomes)
    if report.verified_by:
        log.info(report.verified_line())
    report.failed = {root: report.failed[root] for root in groups if root in report.failed}
    for root, why in report.failed.items():
        log.error("project %s not migrated: %s", root, why)
    report.conclude(timer.seconds, roots=len(groups))
    _count_users(report, checked)
    await _end(steps, report, timer, conclude=False)
    if causes:
        raise run_failure(report, causes)
    return report


def _by_owner(plan: MigrationPlan, roots: list[str]) -> dict[int, list[str]]:
    """destination owner -> their roots, in the plan's order (one group when every project has one owner)."""
    owner = {p.src_uuid: p.owner_id for p in plan.projects}
    groups: dict[int, list[str]] = {}
    for root in roots:
        groups.setdefault(owner.get(root, 0), []).append(root)
    return groups


def _count_users(report: MigrationReport, checked: PreflightReport) -> None:
    if checked.matches:
        report.count_users(checked.matches, checked.selection.skipped, checked.selection.owners)


async def _end(steps: Steps, report: MigrationReport, timer: StageTimer, *, conclude: bool = True) -> MigrationReport:
    if conclude:
        report.seconds = timer.seconds
    await steps.publish(report)
    steps.log.info(report.headline())
    return report


@dataclass
class _Copied:
    """What the copy left: ``outcomes`` (copied or already there), ``there`` (each object's state
    to record: the last listing's, or while ``verifying`` runs, what the copies reported), ``lacking``
    (planned objects the last listing did not see as their source), ``failure`` (the first copy
    failure). ``before`` and ``copied``: the outcomes before the last pass and of it."""

    outcomes: list[CopyOutcome]
    there: list[CopyOutcome]
    lacking: Batch
    failure: Exception | None
    verifying: asyncio.Future[tuple[list[CopyOutcome], Batch]] | None = None
    before: list[CopyOutcome] = field(default_factory=list)
    copied: list[CopyOutcome] = field(default_factory=list)


async def _copy(
    run: MigrationRun, steps: Steps, plan: MigrationPlan, report: MigrationReport, timer: StageTimer,
    listed: Listed | None,
) -> _Copied:
    """Copy what the destination lacks (``listed``: its listings taken earlier in this run), then list
    it again: that listing verifies every planned object (size and ETag, or projmig's mark). A first
    pass without failure returns at once with that listing running (``verifying``): the rows are
    inserted meanwhile, and each root commits only once the listing saw its objects as the copies
    reported them (:class:`_ListingGate`). Else the listing is awaited here (:func:`_verify`).
    Timed as "copy" and "verify"."""
    copies = plan.copies
    started = time.monotonic()
    there, todo = await steps.compare(run, copies, listed)
    if there:
        steps.log.info("%d objects (%s) already in the destination", len(there), human_bytes(sum(o.size for o in there)))
    if not todo:  # that listing, taken in this run, saw every object with its source's size and ETag
        timer.add("verify", time.monotonic() - started)
        return _Copied(list(there), there, [], None)
    timer.add("copy", time.monotonic() - started)
    copied, failure = await _copy_pass(run, steps, copies, todo, there, report, timer, again=False)
    if failure is None:
        verifying = asyncio.ensure_future(_timed(timer, "verify", steps.compare(run, copies)))
        return _Copied([*there, *copied], [*there, *copied], [], None, verifying, list(there), copied)
    return await _verify(run, steps, copies, list(there), copied, failure, report, timer)


async def _copy_pass(
    run: MigrationRun, steps: Steps, copies: list[ObjectCopy], todo: Batch, there: list[CopyOutcome],
    report: MigrationReport, timer: StageTimer, *, again: bool,
) -> tuple[list[CopyOutcome], Exception | None]:
    """Copy ``todo`` in batches (``again``: the second pass, not from cached results): (the outcomes,
    the first failure)."""
    opts = run.settings.options
    started = time.monotonic()
    total_bytes = sum(c.size for c in copies)
    done_bytes = sum(o.size for o in there)  # counted again from what the last listing saw
    batches = batch_transfers(
        todo, large=opts.multipart_threshold, max_files=opts.batch_max_files, max_bytes=opts.batch_max_bytes
    )
    report.copy_task_runs += len(batches)
    steps.log.info("copying %d objects (%s) in %d task runs", len(todo), human_bytes(sum(c.size for c, _ in todo)), len(batches))
    await steps.copying(len(todo), sum(c.size for c, _ in todo))
    copied: list[CopyOutcome] = []
    failure: Exception | None = None
    async for result in steps.copy_batches(run, batches, again=again):
        if isinstance(result, Exception):
            failure = failure or result
            continue
        copied += result
        done_bytes += sum(o.size for o in result)
        await steps.copied(result, len(there) + len(copied), len(copies), done_bytes, total_bytes)
    timer.add("copy", time.monotonic() - started)
    return copied, failure


async def _verify(
    run: MigrationRun, steps: Steps, copies: list[ObjectCopy], before: list[CopyOutcome], copied: list[CopyOutcome],
    failure: Exception | None, report: MigrationReport, timer: StageTimer,
    listing: tuple[list[CopyOutcome], Batch] | None = None,
) -> _Copied:
    """The destination listed (or ``listing``, taken since the copy) and compared with every planned
    object; what still differs after a copy without failure (a cached task result can be stale if
    someone deleted the objects since) is copied once more, and listed again."""
    for again in (False, True):
        try:
            with timer("verify"):
                there, todo = listing if listing is not None else await steps.compare(run, copies)
        except ProjmigError:
            if failure is None:
                raise
            raise failure from None  # what went wrong is the copy's; the destination cannot even be listed now
        listing = None
        differing = {c.dst_key for c, _ in todo}
        before = before + [o for o in copied if o.dst_key not in differing]
        if failure is not None or not todo or again:
            break
        steps.log.warning("%d objects still differ from their source after copying: copying them again", len(todo))
        copied, failure = await _copy_pass(run, steps, copies, todo, there, report, timer, again=True)
    return _Copied(before, there, todo, failure)


async def _timed(timer: StageTimer, stage: str, step: Awaitable[T]) -> T:
    with timer(stage):
        return await step


class _ListingGate:
    """The listing that verifies the copies, running while the rows are inserted: each root's
    transaction waits for it before COMMIT, and commits only if it saw every object of the root in
    the state its rows record (what the copy reported); else :class:`NotConfirmed` (rolled back)."""

    def __init__(self, listing: asyncio.Future[tuple[list[CopyOutcome], Batch]], recorded: dict[str, ObjectState]):
        self.listing, self.recorded = listing, recorded
        self._seen: dict[str, ObjectState] | None = None

    async def confirm(self, plan: MigrationPlan) -> None:
        try:
            there, _ = await asyncio.shield(self.listing)  # (one root giving up must not cancel it for the others)
        except ProjmigError as exc:
            raise NotConfirmed(f"not committed: the destination could not be listed to verify the copies: {exc}") from None
        if self._seen is None:
            self._seen = states_of(there)
        for copy in plan.copies:
            seen = self._seen.get(copy.dst_key)
            if seen != self.recorded.get(copy.dst_key):
                what = "missing" if seen is None else f"{seen.size} bytes, ETag {seen.etag}"
                raise NotConfirmed(f"not committed: the destination's listing shows {copy.dst_key} {what}, not as copied")


def _fail_lacking(
    plan: MigrationPlan, roots: list[str], copied: _Copied, causes: dict[str, BaseException], kept: set[str],
    report: MigrationReport,
) -> None:
    """The ``roots`` with planned objects the copy left lacking: failed (``causes``, ``report``), and
    with a transient copy failure, their unfinished uploads ``kept`` for a rerun."""
    groups = plan.roots()
    for root in roots:
        own = {p.dst_uuid for p in groups[root]}
        mine = [(c, s) for c, s in copied.lacking if project_of(c.dst_key) in own]
        if not mine:
            continue
        if copied.failure is not None:
            causes[root] = copied.failure
            report.failed[root] = f"{len(mine)} objects not copied (e.g. {mine[0][0].dst_key}): {copied.failure}"
            if isinstance(copied.failure, TransferError) and copied.failure.transient:
                kept.update(c.dst_key for c, _ in mine)
        else:
            total = sum(1 for c in plan.copies if project_of(c.dst_key) in own)
            causes[root] = _not_matching(mine, total)
            report.failed[root] = str(causes[root])


async def _insert(
    run: MigrationRun, steps: Steps, plan: MigrationPlan, verified: dict[str, ObjectState], roots: list[str],
    gate: _ListingGate | None,
) -> list[RootInsert]:
    inserted: list[RootInsert] = []
    # owners in accounts of their own: one insert step per account (a unit per user in Prefect's UI)
    for group in _by_owner(plan, roots).values():
        inserted += await steps.insert_roots(run, plan, verified, group, gate.confirm if gate else None)
    return inserted


def _not_matching(lacking: Batch, total: int) -> VerificationError:
    try:
        verified_states([], lacking, total)
    except VerificationError as exc:
        return exc
    raise AssertionError("objects lacking, yet verified")  # pragma: no cover


async def _leave_migrated(
    run: MigrationRun, steps: Steps, plan: MigrationPlan, migrated: list[str], listed: Listed | None,
    report: MigrationReport,
) -> MigrationPlan:
    """Projects an earlier run inserted belong to the destination's users now: none of their objects
    is copied, overwritten or deleted, none of their rows touched. Their objects are compared with
    the source (read-only, from the listing taken) to say what differs; the uploads this migration
    left open for them (:mod:`projmig.marks`) are aborted. Returns the plan of the other projects."""
    frozen = set(migrated)
    steps.log.info("already migrated by an earlier run, left as they are: %s", ", ".join(migrated))
    report.already_present = [p.dst_uuid for p in plan.projects if p.dst_uuid in frozen]
    theirs = plan.subset(frozen)
    _, differing = await steps.compare(run, theirs.copies, listed)
    by_project: dict[str, list[tuple[ObjectCopy, ObjectState | None]]] = {}
    for copy, state in differing:
        by_project.setdefault(project_of(copy.dst_key), []).append((copy, state))
    for project in theirs.projects:
        if project.dst_uuid in by_project:
            found = by_project[project.dst_uuid]
            copy, state = found[0]
            what = "missing" if state is None else f"{state.size} bytes, ETag {state.etag}"
            report.warnings.append(
                f"{project.dst_uuid} (already migrated, left as it is): {len(found)} of {project.objects} objects differ "
                f"from the source, e.g. {copy.dst_key} ({what}; source {copy.size} bytes, ETag {copy.etag})"
            )
    await steps.abort_uploads(run, theirs.copies)
    return plan.subset({p.dst_uuid for p in plan.projects} - frozen)


async def rollback(run: MigrationRun, steps: Steps | None = None, *, dry_run: bool = False) -> RollbackResult:
    """Remove from the destination what the migration of ``run``'s choices inserted: rows (one
    transaction), then objects, holding the projects' locks (a run opened with ``lock``). Raises
    :class:`projmig.rollback.RollbackRefused` (nothing removed) when a project changed since, and
    :class:`projmig.locks.MigrationBusy` when a migration of one of them is running."""
    steps = steps or Steps()
    result = await steps.rollback_rows(run, dry_run=dry_run)
    if not dry_run and not result.nothing:
        result = await steps.rollback_objects(run, result)
    for line in result.summary_lines():
        steps.log.info(line)
    await steps.publish_rollback(result)
    steps.log.info(result.headline())
    return result


__all__ = ["MigrationFailed", "ProjmigError", "Steps", "migrate", "rollback", "run_failure"]
