"""Where copy task runs execute, and their results as each finishes: in the flow's process,
concurrently in its event loop (sharing the run's clients and copy limits), or on a Dask cluster
(``options.task_runner = "dask"``), whose workers get the two S3 sections and the options only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import Any

from prefect.futures import as_completed
from prefect.utilities.annotations import quote

from projmig.copier import CopyOutcome
from projmig.errors import ConfigError
from projmig.run import MigrationRun
from projmig.steps import Batch


class CopyRunner:
    """Runs copy task runs for a flow; a Dask cluster is started at the first batch (a running
    scheduler at ``host.dask_address``, else a local cluster of ``options.dask_workers`` processes)
    and stopped by :meth:`close`."""

    def __init__(self, logger: Any):
        self.logger = logger
        self._stack = ExitStack()
        self._dask: Any = None

    @property
    def remote(self) -> bool:
        """Task runs in other processes: their byte counts do not reach this process's listeners."""
        return self._dask is not None

    def close(self) -> None:
        self._stack.close()

    async def run(self, run: MigrationRun, copy_task: Any, batches: list[Batch]) -> AsyncIterator[list[CopyOutcome] | Exception]:
        """Each batch's outcomes (or its failure) as it finishes; what the others copy is kept."""
        transfer = run.transfers.settings
        if run.settings.options.task_runner == "dask":
            dask = self._dask or self._start_dask(run)
            futures = [dask.submit(copy_task, {"transfer": transfer, "batch": batch}) for batch in batches]
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as exc:
                    yield exc
            return
        runs = asyncio.Semaphore(run.settings.options.task_concurrency)

        async def one(batch: Batch) -> list[CopyOutcome]:
            async with runs:
                # quoted: Prefect would walk each object of the batch (twice) looking for futures (not for
                # Dask, above: its arguments would lose the quote on the way, a tuple to Dask)
                return await copy_task(transfer=transfer, batch=quote(batch), run=run)

        pending = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            for next_done in asyncio.as_completed(pending):
                try:
                    yield await next_done
                except Exception as exc:
                    yield exc
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _start_dask(self, run: MigrationRun) -> Any:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError("options.task_runner is 'dask' but prefect-dask is not installed: pip install 'projmig[dask]'") from None
        options, address = run.settings.options, run.settings.host.dask_address
        if address:
            runner = DaskTaskRunner(address=address)
            self.logger.info("copy task runs go to the Dask scheduler at %s", address)
        else:
            threads = max(1, -(-options.task_concurrency // options.dask_workers))
            runner = DaskTaskRunner(cluster_kwargs={
                "n_workers": options.dask_workers, "threads_per_worker": threads, "processes": True,
                "host": "127.0.0.1", "dashboard_address": None,
            })
            self.logger.info("copy task runs go to a local Dask cluster of %d processes", options.dask_workers)
        self._dask = self._stack.enter_context(runner)
        return self._dask
