"""Where copy task runs execute, and their results as each finishes: in the flow's process,
concurrently in its event loop (sharing one pair of clients and the copy limits:
``steps.shared_copy``), or on a Dask cluster (``options.task_runner = "dask"``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from prefect.futures import as_completed

from projmig import steps
from projmig.errors import ConfigError
from projmig.copier import CopyOutcome
from projmig.settings import MigrationOptions, MigrationSettings


@dataclass
class CopyRunner:
    submit: Callable[..., Any] | None  # (task, **parameters) -> PrefectFuture; None: in the flow's event loop
    remote: bool  # task runs in other processes: their byte counts do not reach this process's listeners


@contextmanager
def copy_runner(options: MigrationOptions, logger: Any) -> Iterator[CopyRunner]:
    """The runner ``options`` choose: the flow's event loop, or a Dask cluster (a running scheduler
    at ``dask_address``, else a local cluster of ``dask_workers`` processes, started at the first
    submitted task and stopped when this block ends)."""
    if options.task_runner != "dask":
        yield CopyRunner(submit=None, remote=False)
        return
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("options.task_runner is 'dask' but prefect-dask is not installed: pip install 'projmig[dask]'") from None
    if options.dask_address:
        runner = DaskTaskRunner(address=options.dask_address)
        logger.info("copy task runs go to the Dask scheduler at %s", options.dask_address)
    else:
        threads = max(1, -(-options.task_concurrency // options.dask_workers))
        runner = DaskTaskRunner(cluster_kwargs={
            "n_workers": options.dask_workers, "threads_per_worker": threads, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None,
        })
        logger.info("copy task runs go to a local Dask cluster of %d processes", options.dask_workers)
    with runner:
        yield CopyRunner(submit=lambda task, **parameters: runner.submit(task, parameters), remote=True)


async def run_copies(
    runner: CopyRunner, copy_task: Any, settings: MigrationSettings, batches: list, share: int,
    failures: list[BaseException],
) -> AsyncIterator[list[CopyOutcome]]:
    """Each copy task run's outcomes as it finishes; failures are collected, not raised, so that
    what the other task runs copy is kept."""
    if runner.submit is not None:
        futures = [runner.submit(copy_task, settings=settings, batch=batch, share=share) for batch in batches]
        for future in as_completed(futures):
            try:
                yield future.result()
            except BaseException as exc:
                failures.append(exc)
        return
    runs = asyncio.Semaphore(settings.options.task_concurrency)

    async def one(batch: list) -> list[CopyOutcome]:
        async with runs:
            return await copy_task(settings=settings, batch=batch, share=share)

    async with steps.shared_copy(settings):
        pending = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            for next_done in asyncio.as_completed(pending):
                try:
                    yield await next_done
                except Exception as exc:
                    failures.append(exc)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
