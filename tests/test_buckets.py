"""Listing, aborting uploads and deleting objects in real buckets (SeaweedFS, and Ceph's RADOS
Gateway where marks and upload records must survive as user metadata): only what is asked for, and
only what carries this migration's mark where that is the condition."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone

import pytest

from projmig.buckets import (
    DELETE_BATCH,
    RANGE_BOUNDS,
    abort_marked_uploads,
    abort_upload,
    abort_uploads,
    conditional_deletes,
    delete_if_marked,
    delete_marked,
    delete_objects,
    list_prefix,
    list_uploads,
    listing_pages,
)
from projmig.errors import TransferError
from projmig.marks import COPY_MARK, create_recorded_upload, ledger_key, mark_of
from projmig.s3 import Retrier, s3_client
from projmig.s3data import BotoData
from projmig.sandbox import Sandbox

from .conftest import SEAWEEDFS, unique
from .faults.proxy import FaultProxy

retry = Retrier(attempts=3, timeout=60, initial_wait=0.05)


async def test_only_this_migrations_uploads_are_aborted_and_only_its_objects_deleted(destination_bucket) -> None:
    dst, db = destination_bucket
    ours, other = "p/n/ours.bin", "p/n/other.bin"
    mark, elsewhere = mark_of(ours, ours), mark_of("q/n/x", ours)
    await create_recorded_upload(dst, db, ours, mark, retry, Metadata={COPY_MARK: mark})
    assert (await dst.head_object(Bucket=db, Key=ledger_key(ours)))["Metadata"] == {COPY_MARK: mark}  # kept as written
    # a destination user's uploads: of another key, and of the very key the migration copies
    theirs = [(await dst.create_multipart_upload(Bucket=db, Key=key))["UploadId"] for key in (other, other, ours)]
    # another migration's mark on the same key does not make its uploads ours
    assert await abort_marked_uploads(dst, db, {ours: elsewhere, other: mark}, retry) == []
    assert await abort_marked_uploads(dst, db, {ours: mark, other: mark}, retry) == [ours]
    assert sorted(u["UploadId"] for u in await list_uploads(dst, db, "p/", retry)) == sorted(theirs)
    assert await list_prefix(dst, db, "p/", retry) == {}  # the record went with the last upload of ours

    await dst.put_object(Bucket=db, Key=ours, Body=b"ours", Metadata={COPY_MARK: mark})
    await dst.put_object(Bucket=db, Key=other, Body=b"written by a destination user")
    assert not await delete_if_marked(dst, db, other, mark, retry)
    assert not await delete_if_marked(dst, db, ours, elsewhere, retry)
    assert await delete_if_marked(dst, db, ours, mark, retry)
    assert set(await list_prefix(dst, db, "p/", retry)) == {other}


async def test_uploads_are_aborted_by_key_and_age_and_one_gone_meanwhile_is_no_error(
    request: pytest.FixtureRequest, destination_bucket
) -> None:
    dst, db = destination_bucket
    probe, other = "p/.probe", "p/n/other.bin"
    gone = (await dst.create_multipart_upload(Bucket=db, Key=probe))["UploadId"]
    await dst.abort_multipart_upload(Bucket=db, Key=probe, UploadId=gone)  # someone else was first
    # Ceph answers NoSuchUpload (as AWS does): not aborted by this call; SeaweedFS takes the abort again
    seaweedfs = request.node.callspec.params["destination_bucket"] == SEAWEEDFS
    assert await abort_upload(dst, db, probe, gone, retry) is seaweedfs
    await dst.create_multipart_upload(Bucket=db, Key=probe)
    theirs = (await dst.create_multipart_upload(Bucket=db, Key=other))["UploadId"]
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    assert await abort_uploads(dst, db, "p/", retry, keys={probe}, older_than=an_hour_ago) == []  # too young
    assert await abort_uploads(dst, db, "p/", retry, keys={probe}) == [probe]
    assert [u["UploadId"] for u in await list_uploads(dst, db, "p/", retry)] == [theirs]
    with pytest.raises(TransferError, match=r"abort upload of p/n/other\.bin: NoSuchBucket"):
        await abort_upload(dst, unique("no-such-bucket"), other, theirs, retry)


async def test_more_keys_than_one_delete_objects_request_takes(sandbox: Sandbox) -> None:
    """DeleteObjects takes at most 1,000 keys: 2,345 keys go in three requests, and keys that are
    not there (an earlier rollback removed them) count as deleted, as S3 reports them."""
    s3 = await sandbox.destination.create_bucket(unique("many-deletes"))
    asked = [f"p/{i:05d} näme+%#.dat" for i in range(2 * DELETE_BATCH + 345)]
    async with s3_client(s3) as client:
        slots = asyncio.Semaphore(32)

        async def put(key: str) -> None:
            async with slots:
                await client.put_object(Bucket=s3.bucket, Key=key, Body=b"")

        await asyncio.gather(*(put(k) for k in asked[:-5]))  # the last 5 were never there
        kept = "q/not-asked-for.dat"
        await client.put_object(Bucket=s3.bucket, Key=kept, Body=b"x")

        requests: list[int] = []
        client.meta.events.register(
            "before-call.s3.DeleteObjects", lambda params, **_: requests.append(params["body"].count(b"<Key>"))
        )
        assert await delete_objects(client, s3.bucket, asked, Retrier(attempts=3, timeout=60)) == len(asked)
        assert requests == [DELETE_BATCH, DELETE_BATCH, 345]
        left: set[str] = set()
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
            left.update(o["Key"] for o in page.get("Contents", []))
    assert left == {kept}


async def test_a_long_listing_read_as_key_ranges_at_once_misses_nothing(destination_bucket) -> None:
    """More than a page under a prefix: the rest is listed as key ranges at once (``RANGE_BOUNDS``:
    after the prefix, osparc's keys go on with a node id's hex digit). Every key comes back once,
    whatever follows the prefix (a hex digit or not, a key exactly at a range's bound), and no key
    outside the prefix; the same as the listing page after page."""
    dst, db = destination_bucket
    # the first page: keys that sort before every range (a '-' after the prefix); then a few after
    # each hex digit and after other characters
    keys = [f"p/-{i:04d}/file + ü.dat" for i in range(1000)]
    keys += [f"p/{lead}{i}/file + ü.dat" for lead in "0123456789abcdefA_Z~gzé" for i in range(8)]
    keys += ["p/5", "p/f", "p/0"]
    slots = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with slots:
            await dst.put_object(Bucket=db, Key=key, Body=key.encode())

    await asyncio.gather(*(put(k) for k in [*keys, "o/5", "q/0", "pa/5"]))
    asked: list[str | None] = []

    class Watched(BotoData):
        async def list_page(self, bucket, prefix, token, *, start_after=None):
            asked.append(start_after)
            return await super().list_page(bucket, prefix, token, start_after=start_after)

    listed = await list_prefix(dst, db, "p/", retry, data=Watched(dst))
    assert sorted(listed) == sorted(keys)
    assert listed["p/5"].size == 3
    assert len([a for a in asked if a is not None]) == len(RANGE_BOUNDS)  # one range per bound, all after the first page
    paged = [key async for page in listing_pages(dst, db, "p/", retry) for key, _, _ in page]
    assert paged == sorted(keys)


async def test_each_server_is_asked_whether_it_honours_a_conditional_delete(
    request: pytest.FixtureRequest, destination_bucket
) -> None:
    """DeleteObjects with a per-key ETag that does not match: SeaweedFS keeps the object (412
    PreconditionFailed, as AWS does since 2025), Ceph RGW 16.2 deletes it anyway. The probe object
    goes either way."""
    dst, db = destination_bucket
    seaweedfs = request.node.callspec.params["destination_bucket"] == SEAWEEDFS
    assert await conditional_deletes(dst, db, retry) is seaweedfs
    assert await list_prefix(dst, db, "", retry) == {}


@pytest.mark.fault_proxy
@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
async def test_an_object_written_over_between_its_mark_read_and_its_delete_is_kept(fixture_simcore, batched: bool) -> None:
    """Deleting what carries a mark reads the mark (HEAD) and deletes under the ETag that read gave: a
    destination user who writes over the object in between keeps their object, where the server
    honours the condition (SeaweedFS here; DeleteObject's If-Match one by one, DeleteObjects' per-key
    ETag batched)."""
    s3 = fixture_simcore.destination_s3
    bucket, mark = s3.bucket, mark_of("p/n/x", "p/n/x")
    victim, other = "p/n/a.bin", "p/n/b.bin"
    async with s3_client(s3) as client:
        for key in (victim, other):
            await client.put_object(Bucket=bucket, Key=key, Body=b"copied by projmig", Metadata={COPY_MARK: mark})
    theirs = b"written by a destination user"
    written: list[str] = []

    def write_over() -> None:  # in the proxy's thread: before the delete reaches the server
        if written:
            return
        written.append(victim)

        async def put() -> None:
            async with s3_client(s3) as client:
                await client.put_object(Bucket=bucket, Key=victim, Body=theirs)

        thread = threading.Thread(target=asyncio.run, args=(put(),))
        thread.start()
        thread.join()

    with FaultProxy("127.0.0.1", fixture_simcore.sandbox.destination.s3.s3_port, name="destination-s3", http=True) as proxy:
        proxy.after(match=f"DELETE /{bucket}/{victim} ".encode(), do=write_over)  # DeleteObject
        proxy.after(match=f"<Key>{victim}</Key>".encode(), do=write_over)  # DeleteObjects
        async with s3_client(s3.model_copy(update={"endpoint": proxy.endpoint})) as client:
            if batched:
                outcome = await delete_marked(client, bucket, {victim: mark, other: mark}, retry, conditional=True)
                removed, kept = set(outcome.removed), outcome.kept
            else:
                removed = {k for k in (victim, other) if await delete_if_marked(client, bucket, k, mark, retry)}
                kept = 2 - len(removed)
    assert written == [victim] and removed == {other} and kept == 1
    async with s3_client(s3) as client:
        body = await client.get_object(Bucket=bucket, Key=victim)
        async with body["Body"] as stream:
            assert await stream.read() == theirs
        assert set(await list_prefix(client, bucket, "p/", retry)) == {victim}
