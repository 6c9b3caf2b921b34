"""Copy task runs on a Dask cluster (prefect-dask's DaskTaskRunner), selected by ``options.task_runner``.

The clusters run their workers in processes: settings, batches and results cross process
boundaries by pickling, and the task runs report to the same Prefect API as the flow run.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from distributed import Client, LocalCluster

from flows.migrate import migrate_project
from projmig import commands
from projmig.sandbox.sample import SampleSpec, build_sample_project

from ..conftest import Simcore

pytestmark = pytest.mark.usefixtures("prefect")


def executed_per_worker(address: str) -> dict[str, int]:
    with Client(address) as client:
        return client.run(lambda dask_worker: dask_worker.state.executed_count)


async def test_copy_task_runs_execute_on_the_workers_of_a_dask_cluster(fixture_simcore: Simcore) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=6, directory_objects=3, multipart_size=6 * 1024 * 1024,
                        multipart_part_size=5 * 1024 * 1024, hidden_children=0),
    )
    cluster = await asyncio.to_thread(
        LocalCluster, n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        address = cluster.scheduler_address
        settings = fixture_simcore.settings(sample.uuid, options={
            "task_runner": "dask", "dask_address": address, "batch_max_files": 3, "multipart_threshold": 5 * 1024 * 1024,
        })
        report = await migrate_project(settings)

        assert report.status == "migrated"
        assert report.objects_copied == len(sample.objects) and report.bytes_copied == sample.total_bytes
        # every copy task run was executed by a worker process of the cluster, none in this process
        executed = await asyncio.to_thread(executed_per_worker, address)
        assert len(executed) == 2
        assert sum(executed.values()) == report.copy_task_runs >= 3
    finally:
        await asyncio.to_thread(cluster.close)

    assert (await commands.verify(settings, deep=True)).equal


async def test_without_an_address_the_flow_run_starts_its_own_local_cluster(
    fixture_simcore: Simcore, caplog: pytest.LogCaptureFixture
) -> None:
    sample = await build_sample_project(
        fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
        spec=SampleSpec(files=3, directory_objects=0, multipart_size=0, hidden_children=0, soft_link=False),
    )
    settings = fixture_simcore.settings(sample.uuid, options={"task_runner": "dask", "dask_workers": 1, "batch_max_files": 2})

    with caplog.at_level(logging.INFO):
        report = await migrate_project(settings)

    assert report.status == "migrated" and report.objects_copied == len(sample.objects) and report.copy_task_runs == 2
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in caplog.text  # prefect-dask's
    assert (await commands.verify(settings, deep=True)).equal
