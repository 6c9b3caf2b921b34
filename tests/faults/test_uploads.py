"""No multipart upload of ours stays open in the destination once a migration is over: after a
failure retrying cannot fix (aborted at once), after a killed process (the rerun finishes or aborts
what it left), and ``projmig cleanup`` aborts old ones of this migration (:mod:`projmig.marks`) and nothing else."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import Counter
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from flows.migrate import migrate_project
from projmig import commands, steps
from projmig.errors import TransferError
from projmig.probes import PROBE_KEY
from projmig.s3 import s3_client
from projmig.run import MigrationRun

from ..conftest import CEPH, SEAWEEDFS, upload_started_by_projmig
from .conftest import REPO, MiB, Faulty, MigrationProcess, open_uploads, prefect_env

pytestmark = pytest.mark.usefixtures("prefect")


def is_part_put(method: str, target: str) -> bool:
    """A part of a copy (not the part the preflight's write probe uploads)."""
    return method == "PUT" and "uploadId=" in target and PROBE_KEY not in target


async def test_a_failure_retrying_cannot_fix_aborts_the_upload_at_once(faulty: Faulty) -> None:
    sample = await faulty.sample(files=2, directory_objects=0, soft_link=False, multipart_size=30 * MiB)
    big = next(k for k in sample.objects if k.endswith(".h5"))
    settings = faulty.settings(sample.uuid)
    proxy = faulty.proxies.dst_s3
    proxy.fail_requests(1000, 403, "AccessDenied", match=is_part_put)

    with pytest.raises(TransferError) as failed:
        await migrate_project(settings)
    assert not failed.value.transient
    assert big in str(failed.value) and "AccessDenied" in str(failed.value)
    assert await open_uploads(faulty.direct(sample.uuid)) == []
    # refused parts were not retried: no part of an upload was asked for twice
    tries = Counter(
        (q["uploadId"][0], q["partNumber"][0])
        for r in proxy.requests if is_part_put(r.method, r.target)
        for q in [parse_qs(urlsplit(r.target).query)]
    )
    assert proxy.faults and set(tries.values()) == {1}, tries


async def test_a_process_killed_during_the_write_probe_leaves_no_upload_behind(faulty: Faulty, tmp_path) -> None:
    sample = await faulty.sample(files=3, directory_objects=0, multipart_size=0)
    config = faulty.config_file(tmp_path / "cfg.json", sample.uuid)
    bucket = faulty.env.destination_s3.bucket
    proxy = faulty.proxies.dst_s3
    run = None

    def kill_before_the_abort_leaves() -> None:  # the probe upload is open, its abort not yet sent
        run.kill()
        proxy.cut(then="refuse")  # what the process had not sent yet never leaves

    proxy.after(match=f"DELETE /{bucket}/{sample.uuid}/{PROBE_KEY}".encode(), do=kill_before_the_abort_leaves)
    run = MigrationProcess(config)
    code, out = await run.wait()
    assert run.killed and code == -9, out
    direct = faulty.direct(sample.uuid)
    assert [u["Key"] for u in await open_uploads(direct)] == [f"{sample.uuid}/{PROBE_KEY}"]

    faulty.proxies.heal()
    report = await migrate_project(faulty.settings(sample.uuid))
    assert report.status == "migrated"
    assert await open_uploads(direct) == []


async def test_cleanup_aborts_only_old_uploads_of_the_migration(faulty: Faulty, tmp_path) -> None:
    sample = await faulty.sample(files=3, directory_objects=0, multipart_size=12 * MiB)
    direct = faulty.direct(sample.uuid)
    big = next(k for k in sample.objects if k.endswith(".h5"))
    node = big.split("/")[1]
    bucket = direct.destination.s3.bucket
    async with s3_client(direct.destination.s3) as client:
        async def start(key: str, **extra) -> tuple[str, str]:
            return key, (await client.create_multipart_upload(Bucket=bucket, Key=key, **extra))["UploadId"]

        # an interrupted copy of this migration, a killed preflight's probe
        ours = {(big, await upload_started_by_projmig(client, bucket, big, big)), await start(f"{sample.uuid}/{PROBE_KEY}")}
        theirs = {
            await start(big),  # someone else's upload of a key the migration copies
            await start(f"{sample.uuid}/{node}/outputs/uploaded in the destination.bin"),  # not a key it copies
            await start(f"00000000-1111-2222-3333-444444444444/{node}/outputs/other project.bin"),
        }
    config = faulty.config_file(tmp_path / "cfg.json", sample.uuid)

    def cleanup(age: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "cleanup", "--config", str(config), "--older-than", age],
            cwd=REPO, env=prefect_env(), capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def listed(uploads: list[dict]) -> set[tuple[str, str]]:
        return {(u["Key"], u["UploadId"]) for u in uploads}

    assert "0 unfinished uploads aborted" in cleanup("1h")  # all of them are younger than that
    assert listed(await open_uploads(direct)) == ours | theirs

    out = cleanup("0s")
    assert "2 unfinished uploads aborted" in out, out
    assert listed(await open_uploads(direct)) == theirs

    # and a migration afterwards does not touch them either
    await migrate_project(faulty.settings(sample.uuid))
    assert listed(await open_uploads(direct)) == theirs
    assert (await commands.verify(direct, deep=False)).equal


@pytest.mark.parametrize("faulty", [(SEAWEEDFS, CEPH)], indirect=True, ids=["seaweedfs-to-ceph"])
async def test_an_upload_aborted_under_a_resuming_copy_is_started_over_on_ceph(faulty: Faulty) -> None:
    """Ceph answers ListParts of an aborted upload with NoSuchKey (AWS: NoSuchUpload). An earlier
    run's upload is aborted by someone else (osparc's storage service cleans up uploads it does not
    know) just when the rerun asks for its parts: the copy starts that object over."""
    sample = await faulty.sample(files=1, directory_objects=0, soft_link=False, multipart_size=24 * MiB,
                                 multipart_part_size=6 * MiB)
    big = next(k for k in sample.objects if k.endswith(".h5"))
    direct = faulty.direct(sample.uuid)
    bucket = direct.destination.s3.bucket
    async with s3_client(direct.destination.s3) as client:
        upload = {"UploadId": await upload_started_by_projmig(client, bucket, big, big)}  # an earlier run's
        for number in (1, 2):
            await client.upload_part(Bucket=bucket, Key=big, UploadId=upload["UploadId"], PartNumber=number,
                                     Body=bytes(6 * MiB))

    async def abort() -> None:
        async with s3_client(direct.destination.s3) as client:
            await client.abort_multipart_upload(Bucket=bucket, Key=big, UploadId=upload["UploadId"])

    def abort_it() -> None:  # in the proxy's thread, before the ListParts request reaches Ceph
        done = threading.Thread(target=asyncio.run, args=(abort(),))
        done.start()
        done.join()

    proxy = faulty.proxies.dst_s3
    proxy.after(match=f"uploadId={quote(upload['UploadId'], safe='-_.~')}".encode(), do=abort_it)
    settings = faulty.settings(sample.uuid)
    async with MigrationRun.open(settings) as run:
        checked = await steps.preflight(run, probe_write=False)
        plan = steps.make_plan(await steps.read_graph(run, checked), checked)
        _, todo = await steps.compare(run, plan.copies)
        outcomes = await steps.copy_objects(run.transfers, todo)  # the library step: no task retry to hide a failure

    assert proxy.faults and proxy.faults[0].startswith("called abort_it"), proxy.faults
    assert {o.dst_key: o.resumed_parts for o in outcomes}[big] == 0
    report = await migrate_project(settings)
    assert report.status == "migrated" and report.objects_copied == 0
    assert await open_uploads(direct) == []
    verified = await commands.verify(direct, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
