"""Prefect tasks: each a thin wrapper of one library step (``projmig.steps``), taking settings.

Only the copy task caches across flow runs: its key is what it copies (source keys, sizes, ETags,
destination keys, both buckets), never clients, credentials or the run id; its result (what was
copied, no secrets) is persisted so that a later run can reuse it.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.context import TaskRunContext

from projmig import steps
from projmig.graph import ProjectGraph
from projmig.insert import InsertResult, ProjectInsert
from projmig.buckets import ObjectState
from projmig.copier import CopyOutcome
from projmig.plan import MigrationPlan, ObjectCopy
from projmig.preflight import PreflightReport
from projmig.rollback import RollbackResult
from projmig.settings import MigrationSettings

from .naming import copy_run_name
from .progress import report_bytes

Batch = list[tuple[ObjectCopy, ObjectState | None]]


@task(name="preflight", cache_policy=NONE)
async def preflight(settings: MigrationSettings, probe_write: bool = True) -> PreflightReport:
    return await steps.preflight(settings, probe_write=probe_write)


@task(name="read-graph", cache_policy=NONE)
async def read_graph(settings: MigrationSettings, report: PreflightReport) -> ProjectGraph:
    return await steps.read_project_graph(settings, report)


@task(name="plan", cache_policy=NONE)
def plan(graph: ProjectGraph, report: PreflightReport) -> MigrationPlan:
    return steps.make_plan(graph, report)


@task(name="list-destination", cache_policy=NONE)
async def list_destination(settings: MigrationSettings, prefixes: list[str]) -> dict[str, dict[str, ObjectState]]:
    return await steps.list_destination(settings, prefixes)


@task(name="compare-destination", cache_policy=NONE)
async def compare(
    settings: MigrationSettings, copies: list[ObjectCopy], listed: dict[str, dict[str, ObjectState]] | None = None
) -> tuple[list[CopyOutcome], Batch]:
    return await steps.compare(settings, copies, listed)


def copy_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    settings: MigrationSettings = parameters["settings"]
    digest = hashlib.sha256()
    for side in (settings.source.s3, settings.destination.s3):
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
async def copy_objects(settings: MigrationSettings, batch: Batch, share: int = 1) -> list[CopyOutcome]:
    return await steps.copy_objects(settings, batch, share=share, on_bytes=report_bytes)


@task(name="verify-objects", cache_policy=NONE)
async def verify_objects(settings: MigrationSettings, copies: list[ObjectCopy]) -> dict[str, ObjectState]:
    return await steps.verify_objects(settings, copies)


@task(name="insert-rows", cache_policy=NONE)
async def insert_rows(
    settings: MigrationSettings, plan: MigrationPlan, verified: dict[str, ObjectState]
) -> InsertResult:
    return await steps.insert_rows(settings, plan, verified)


@task(name="insert-rows-each", cache_policy=NONE)
async def insert_rows_each(
    settings: MigrationSettings, plan: MigrationPlan, verified: dict[str, ObjectState], roots: list[str]
) -> list[ProjectInsert]:
    return await steps.insert_rows_each(settings, plan, verified, roots)


@task(name="abort-uploads", cache_policy=NONE)
async def abort_uploads(settings: MigrationSettings, copies: list[ObjectCopy]) -> list[str]:
    return await steps.abort_our_uploads(settings, copies)


@task(name="rollback-rows", cache_policy=NONE)
async def rollback_rows(settings: MigrationSettings, dry_run: bool = False) -> RollbackResult:
    return await steps.rollback_rows(settings, dry_run=dry_run)


@task(name="rollback-objects", cache_policy=NONE, retries=1, retry_delay_seconds=2)
async def rollback_objects(settings: MigrationSettings, result: RollbackResult) -> RollbackResult:
    return await steps.rollback_objects(settings, result)
