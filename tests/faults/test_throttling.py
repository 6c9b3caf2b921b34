"""Throttling (503 SlowDown), server errors (500) and stalls (timeouts) from real S3 traffic: each
S3 call is retried with backoff and jitter, a bounded number of times, under a deadline, and when
the retries run out the error names the object and the cause."""

from __future__ import annotations

import hashlib
import os
from urllib.parse import unquote, urlsplit

import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.buckets import list_prefix
from projmig.copier import CopyFailures, ObjectCopier
from projmig.plan import ObjectCopy
from projmig.s3 import Retrier, s3_client

from .conftest import MiB, Faulty

pytestmark = pytest.mark.usefixtures("prefect")


def key_of(target: str, bucket: str) -> str:
    return unquote(urlsplit(target).path).removeprefix(f"/{bucket}/")


@pytest.fixture
async def through_proxies(faulty: Faulty):
    """(copier factory, source client, source bucket) for objects copied through both S3 proxies."""
    settings = faulty.settings("00000000-0000-0000-0000-000000000000")
    src_s3, dst_s3 = settings.source.s3, settings.destination.s3
    async with s3_client(src_s3) as src, s3_client(dst_s3) as dst:

        def copier(retry: Retrier) -> ObjectCopier:
            return ObjectCopier(src, dst, src_s3.bucket, dst_s3.bucket, retry=retry, multipart_threshold=64 * MiB)

        async def put(key: str, size: int) -> ObjectCopy:
            data = os.urandom(size)
            resp = await src.put_object(Bucket=src_s3.bucket, Key=key, Body=data)
            return ObjectCopy(src_key=key, dst_key=key, size=size, etag=resp["ETag"].strip('"'), file_id=key)

        async def sha256(key: str) -> tuple[str, str]:
            a = await (await src.get_object(Bucket=src_s3.bucket, Key=key))["Body"].read()
            b = await (await dst.get_object(Bucket=dst_s3.bucket, Key=key))["Body"].read()
            return hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()

        yield copier, put, sha256


async def test_slowdown_and_server_errors_are_retried_until_the_migration_succeeds(faulty: Faulty) -> None:
    sample = await faulty.sample(files=6, directory_objects=2, multipart_size=12 * MiB)
    settings = faulty.settings(sample.uuid)
    src, dst = faulty.proxies.src_s3, faulty.proxies.dst_s3
    src.fail_requests(2, 500, "InternalError", match=lambda method, target: method == "GET" and "list-type" not in target)
    dst.fail_requests(3, 503, "SlowDown", match=lambda method, target: method == "PUT")

    report = await migrate_project(settings)

    assert report.status == "migrated" and report.objects_copied == len(sample.objects)
    assert len(src.faults) == 2 and len(dst.faults) == 3, (src.faults, dst.faults)
    verified = await commands.verify(faulty.direct(sample.uuid), deep=True)
    assert verified.equal, [str(d) for d in verified.differences]


@pytest.mark.parametrize(
    "side, status, code",
    [("destination", 503, "SlowDown"), ("destination", 500, "InternalError"), ("source", 503, "SlowDown")],
)
async def test_retries_are_bounded_and_the_last_error_names_the_object_and_the_cause(
    faulty: Faulty, through_proxies, side: str, status: int, code: str
) -> None:
    copier, put, _ = through_proxies
    item = await put("p/n/throttled file.bin", 300_000)
    proxy = faulty.proxies.dst_s3 if side == "destination" else faulty.proxies.src_s3
    method = "PUT" if side == "destination" else "GET"
    proxy.reset_counts()
    proxy.fail_requests(1000, status, code, match=lambda m, target: m == method and "throttled" in target)

    with pytest.raises(CopyFailures) as failed:
        await copier(Retrier(attempts=4, initial_wait=0.01, max_wait=0.1)).copy_all([(item, None)])

    message = str(failed.value)
    assert item.src_key in message and code in message and "gave up after 4 attempts" in message, message
    assert failed.value.transient  # a rerun later may well succeed
    bucket = faulty.env.destination_s3.bucket if side == "destination" else faulty.env.source_s3.bucket
    asked = [r for r in proxy.requests if r.method == method and key_of(r.target, bucket) == item.src_key]
    assert len(asked) == 4 == len(proxy.faults)  # bounded: exactly the attempts, no more


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_a_stalled_transfer_hits_its_deadline_and_is_retried(faulty: Faulty, through_proxies, direction: str) -> None:
    copier, put, sha256 = through_proxies
    size = 4 * MiB
    item = await put(f"p/n/stalled-{direction}.bin", size)
    # a PUT body stops flowing (destination, up) or a GET body (source, down), connection left open
    proxy = faulty.proxies.dst_s3 if direction == "up" else faulty.proxies.src_s3
    proxy.reset_counts()
    proxy.after(**{direction: 1 * MiB}, do="stall", then="heal")

    [outcome] = await copier(Retrier(attempts=3, timeout=2, initial_wait=0.01)).copy_all([(item, None)])

    assert outcome.action == "copied"
    assert [f for f in proxy.faults if f.startswith("stalled")], proxy.faults
    assert getattr(proxy, direction) >= 1 * MiB + size  # the whole body went again on a new connection
    a, b = await sha256(item.src_key)
    assert a == b


async def test_a_transfer_that_stays_stalled_fails_by_name_within_its_attempts(faulty: Faulty, through_proxies) -> None:
    copier, put, _ = through_proxies
    item = await put("p/n/never arrives.bin", 2 * MiB)
    proxy = faulty.proxies.dst_s3
    proxy.after(up=256 * 1024, do="stall", then="stall")

    with pytest.raises(CopyFailures) as failed:
        await copier(Retrier(attempts=2, timeout=1, initial_wait=0.01)).copy_all([(item, None)])

    message = str(failed.value)
    assert item.dst_key in message and "no answer within 1 s" in message and "gave up after 2 attempts" in message, message
    async with s3_client(faulty.direct("00000000-0000-0000-0000-000000000000").destination.s3) as client:
        assert await list_prefix(client, faulty.env.destination_s3.bucket, "p/", Retrier()) == {}
