"""Resume after a cut network: a rerun copies only what is missing, and continues an interrupted
multipart upload from its finished parts (bytes counted at the proxy, not taken from projmig)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.errors import TransferError
from projmig.probes import PROBE_KEY
from projmig.s3 import s3_client

from ..conftest import CEPH_PAIRS, SEAWEEDFS
from .conftest import MiB, Faulty, destination_keys, open_uploads

pytestmark = pytest.mark.usefixtures("prefect")


def put_keys(requests, bucket: str) -> list[str]:
    """Object keys of PUT requests (whole objects and parts)."""
    keys = []
    for r in requests:
        if r.method == "PUT":
            path = unquote(urlsplit(r.target).path)
            keys.append(path.removeprefix(f"/{bucket}/"))
    return keys


async def test_a_rerun_copies_only_the_objects_a_cut_left_missing(faulty: Faulty) -> None:
    sample = await faulty.sample(files=24, file_size=512 * 1024, directory_objects=8, directory_object_size=256 * 1024,
                                 multipart_size=0)
    settings = faulty.settings(sample.uuid, s3_max_attempts=2, copy_concurrency=4)
    direct = faulty.direct(sample.uuid)
    proxy = faulty.proxies.dst_s3
    proxy.after(up=int(0.6 * sample.total_bytes), do="cut", then="refuse")

    with pytest.raises(TransferError) as failed:
        await migrate_project(settings)
    assert failed.value.transient, failed.value

    present = await destination_keys(direct)
    missing = {k for k in sample.objects if k not in present}
    assert present and missing, "the cut should fall in the middle of the copy"
    assert all(present[k] == sample.objects[k] for k in present), "no partial object may appear"

    proxy.heal()
    proxy.reset_counts()
    report = await migrate_project(settings)

    assert report.status == "migrated"
    assert report.objects_skipped == len(present) and report.objects_copied == len(missing)
    bucket = settings.destination.s3.bucket
    # each missing object once, nothing else (but the parts the preflight's write probe puts into an upload it aborts)
    assert sorted(k for k in put_keys(proxy.requests, bucket) if k != f"{sample.uuid}/{PROBE_KEY}") == sorted(missing)
    assert report.bytes_copied == sum(sample.objects[k] for k in missing)
    verified = await commands.verify(direct, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    assert await open_uploads(direct) == []


@pytest.mark.parametrize("faulty, size, parts_at_once", [
    pytest.param((SEAWEEDFS, SEAWEEDFS), 200 * MiB, 8, id="seaweedfs-to-seaweedfs"),
    # smaller (the suite's time): fewer parts in flight, so that some are finished at the cut
    *(pytest.param(pair, 64 * MiB, 2, id="-to-".join(pair)) for pair in CEPH_PAIRS),
], indirect=["faulty"])
async def test_an_interrupted_multipart_upload_continues_from_its_finished_parts(
    faulty: Faulty, capsys, size: int, parts_at_once: int
) -> None:
    part = 8 * MiB
    sample = await faulty.sample(files=0, soft_link=False, directory_objects=0, multipart_size=size, multipart_part_size=part)
    [key] = sample.objects
    settings = faulty.settings(sample.uuid, s3_max_attempts=3, part_concurrency=parts_at_once)
    window = settings.options.part_concurrency * part  # parts in flight when the network goes
    direct = faulty.direct(sample.uuid)
    proxy = faulty.proxies.dst_s3
    cut_at = int(0.6 * size)
    proxy.after(up=cut_at, do="cut", then="refuse")

    with pytest.raises(TransferError) as failed:
        await migrate_project(settings)
    assert failed.value.transient and key in str(failed.value), failed.value
    first_run = proxy.up
    assert first_run == cut_at

    # the upload is kept for the rerun, with the parts that arrived whole
    [upload] = await open_uploads(direct)
    assert upload["Key"] == key
    async with s3_client(direct.destination.s3) as client:
        listed = await client.list_parts(Bucket=direct.destination.s3.bucket, Key=key, UploadId=upload["UploadId"])
    finished = [p for p in listed.get("Parts", []) if p["Size"] == part]
    assert finished, "parts finished before the cut must be in the kept upload"

    proxy.heal()
    proxy.reset_counts()
    report = await migrate_project(settings)
    rerun = proxy.up

    assert report.status == "migrated" and report.objects_copied == 1
    assert report.bytes_copied == size - len(finished) * part  # the finished parts were not sent again
    resent = first_run + rerun - size  # sent by both runs: the parts in flight at the cut (+ request heads)
    assert 0 < resent <= window + MiB
    assert rerun < size - len(finished) * part + MiB
    with capsys.disabled():
        print(
            f"\npart-level resume ({' -> '.join(faulty.env.providers)}): {size // MiB} MiB object ({size // part} parts of {part // MiB} MiB) cut after "
            f"{first_run / size:.0%} was sent; {len(finished)} parts survived; the rerun sent {rerun / size:.1%} of the "
            f"object; bytes re-sent {resent / size:.1%} of the object (a restart would re-send {first_run / size:.0%})"
        )
    verified = await commands.verify(direct, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    assert await open_uploads(direct) == []
