"""Prefect tasks: each a thin wrapper of one library step (:mod:`projmig.steps`) on the run.

The run (:class:`projmig.run.MigrationRun`: clients, limits, locks) is a parameter like any other, but
never part of a cache key: only the copy task caches across flow runs, keyed by what it copies (source
keys, sizes, ETags, destination keys, both buckets), never by clients, credentials or the run id; its
result (what was copied, no secrets) is persisted so that a later run can reuse it. A copy task run on
a Dask worker gets no run: it opens the transfers of its own from the two S3 sections it is given.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.context import TaskRunContext

from projmig import steps
from projmig.buckets import ObjectState
from projmig.copier import CopyOutcome
from projmig.insert import Confirm, RootInsert
from projmig.plan import MigrationPlan, ObjectCopy
from projmig.rollback import RollbackResult
from projmig.run import MigrationRun, TransferSettings, Transfers
from projmig.steps import Batch, Survey

from .naming import copy_run_name
from .progress import report_bytes


@task(name="preflight-and-plan", cache_policy=NONE)
async def survey(run: MigrationRun, probe_write: bool = True) -> Survey:
    """The preflight's checks, the source's graph (read while they run), the write probe, the
    destination's listings and the plan (:func:`projmig.steps.survey`)."""
    return await steps.survey(run, probe_write=probe_write)


@task(name="compare-destination", cache_policy=NONE)
async def compare(run: MigrationRun, copies: list[ObjectCopy]) -> tuple[list[CopyOutcome], Batch]:
    return await steps.compare(run, copies)


def copy_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    transfer: TransferSettings = parameters["transfer"]
    digest = hashlib.sha256()
    for side in (transfer.source, transfer.destination):
        digest.update(f"{side.endpoint or 'aws:' + side.region}\0{side.bucket}\n".encode())
    for copy, _ in parameters["batch"]:
        digest.update(f"{copy.src_key}\0{copy.size}\0{copy.etag}\0{copy.dst_key}\n".encode())
    return f"projmig-copy-{digest.hexdigest()}"


@task(
    name="copy-objects",
    task_run_name=copy_run_name,
    cache_key_fn=copy_cache_key,
    cache_expiration=timedelta(days=30),
    persist_result=True,
    retries=1,
    retry_delay_seconds=2,
)
async def copy_objects(transfer: TransferSettings, batch: Batch, run: MigrationRun | None = None) -> list[CopyOutcome]:
    """``run``: the flow's own, in its process (its clients and limits); none on a Dask worker."""
    if run is not None:
        return await steps.copy_objects(run.transfers, batch, on_bytes=report_bytes)
    async with Transfers.open(transfer) as transfers:
        return await steps.copy_objects(transfers, batch, on_bytes=report_bytes)


@task(name="insert-rows", cache_policy=NONE)
async def insert_rows(
    run: MigrationRun, plan: MigrationPlan, verified: dict[str, ObjectState], roots: list[str],
    confirm: Confirm | None = None,
) -> list[RootInsert]:
    return await steps.insert_roots(run, plan, verified, roots, confirm)


@task(name="rollback-rows", cache_policy=NONE)
async def rollback_rows(run: MigrationRun, dry_run: bool = False) -> RollbackResult:
    return await steps.rollback_rows(run, dry_run=dry_run)


@task(name="rollback-objects", cache_policy=NONE, retries=1, retry_delay_seconds=2)
async def rollback_objects(run: MigrationRun, result: RollbackResult) -> RollbackResult:
    return await steps.rollback_objects(run, result)
