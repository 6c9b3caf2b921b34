"""Copying objects between two real SeaweedFS servers: skip, layouts, resume, server-side copy."""

from __future__ import annotations

import hashlib
import os

import pytest
from botocore.exceptions import ClientError

from projmig.objects import (
    MARKER,
    ObjectCopier,
    ObjectState,
    batch_transfers,
    compare_with_destination,
    list_prefix,
    list_uploads,
)
from projmig.plan import ObjectCopy
from projmig.s3 import Retrier, is_transient, s3_client

from .conftest import Simcore

MiB = 1024 * 1024
retry = Retrier(attempts=3, timeout=60, initial_wait=0.05)


async def put_multipart(client, bucket: str, key: str, data: bytes, part: int) -> str:
    upload = await client.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, len(data), part), 1):
        resp = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data[start:start + part])
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})
    resp = await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts})
    return resp["ETag"].strip('"')


async def sha256(client, bucket: str, key: str) -> str:
    resp = await client.get_object(Bucket=bucket, Key=key)
    return hashlib.sha256(await resp["Body"].read()).hexdigest()


def copies_of(listing: dict[str, ObjectState]) -> list[ObjectCopy]:
    return [ObjectCopy(src_key=k, dst_key=k, size=s.size, etag=s.etag, file_id=k) for k, s in sorted(listing.items())]


@pytest.fixture
async def clients(fixture_simcore: Simcore):
    async with s3_client(fixture_simcore.source_s3) as src, s3_client(fixture_simcore.destination_s3) as dst:
        yield src, dst, fixture_simcore.source_s3.bucket, fixture_simcore.destination_s3.bucket


async def test_copies_keep_etags_and_bytes(clients) -> None:
    src, dst, sb, db = clients
    names = ["p/n/plain.bin", "p/n/with space.txt", "p/n/ünïcode ü.dat", "p/n/a+b=c.bin", "p/n/100% sure.txt", "p/n/hash#tag.csv", "p/n/empty"]
    for i, key in enumerate(names):
        await src.put_object(Bucket=sb, Key=key, Body=os.urandom(0 if key.endswith("empty") else 1000 * (i + 1)))
    multipart_etag = await put_multipart(src, sb, "p/n/big.h5", os.urandom(13 * MiB + 17), part=6 * MiB)
    assert multipart_etag.endswith("-3")
    copies = copies_of(await list_prefix(src, sb, "p/", retry))
    copier = ObjectCopier(src, dst, sb, db, retry=retry, multipart_threshold=8 * MiB)
    outcomes = await copier.copy_all([(c, None) for c in copies])
    assert {o.action for o in outcomes} == {"copied"}
    copied = await list_prefix(dst, db, "p/", retry)
    for c in copies:
        assert copied[c.dst_key] == ObjectState(size=c.size, etag=c.etag), c.dst_key  # source layout reproduced
        assert await sha256(src, sb, c.src_key) == await sha256(dst, db, c.dst_key)
    there, todo = await compare_with_destination(dst, db, copies, retry)
    assert len(there) == len(copies) and todo == []


async def test_large_single_part_object_is_rechunked_and_marked(clients) -> None:
    src, dst, sb, db = clients
    data = os.urandom(21 * MiB)
    await src.put_object(Bucket=sb, Key="p/n/single.bin", Body=data)
    [copy] = copies_of(await list_prefix(src, sb, "p/", retry))
    assert "-" not in copy.etag
    copier = ObjectCopier(src, dst, sb, db, retry=retry, multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB)
    [outcome] = await copier.copy_all([(copy, None)])
    assert outcome.etag.endswith("-5") and outcome.bytes_sent == len(data)
    head = await dst.head_object(Bucket=db, Key=copy.dst_key)
    assert head["Metadata"][MARKER] == copy.etag
    assert await sha256(dst, db, copy.dst_key) == hashlib.sha256(data).hexdigest()
    there, todo = await compare_with_destination(dst, db, [copy], retry)
    assert [o.dst_key for o in there] == [copy.dst_key] and not todo


async def test_interrupted_multipart_upload_is_continued(clients) -> None:
    src, dst, sb, db = clients
    data = os.urandom(31 * MiB)
    await put_multipart(src, sb, "p/n/resume.bin", data, part=6 * MiB)
    [copy] = copies_of(await list_prefix(src, sb, "p/", retry))
    # an earlier run got three of six parts across before it died
    upload = await dst.create_multipart_upload(Bucket=db, Key=copy.dst_key)
    for number in (1, 2, 3):
        await dst.upload_part(Bucket=db, Key=copy.dst_key, UploadId=upload["UploadId"], PartNumber=number,
                              Body=data[(number - 1) * 6 * MiB:number * 6 * MiB])
    # and an older attempt left a stale upload of the same key
    await dst.create_multipart_upload(Bucket=db, Key=copy.dst_key)
    copier = ObjectCopier(src, dst, sb, db, retry=retry, multipart_threshold=8 * MiB)
    [outcome] = await copier.copy_all([(copy, None)])
    assert outcome.resumed_parts == 3
    assert outcome.bytes_sent == len(data) - 18 * MiB
    assert outcome.etag == copy.etag
    assert await sha256(dst, db, copy.dst_key) == hashlib.sha256(data).hexdigest()
    assert await list_uploads(dst, db, "p/", retry) == []  # the resumed one completed, the stale one aborted


async def test_server_side_copy_on_the_same_endpoint(fixture_simcore: Simcore) -> None:
    other = await fixture_simcore.sandbox.source.create_bucket(fixture_simcore.source_s3.bucket + "-b")
    async with s3_client(fixture_simcore.source_s3) as client:
        sb, db = fixture_simcore.source_s3.bucket, other.bucket
        await client.put_object(Bucket=sb, Key="p/small.txt", Body=b"x" * 5000)
        await put_multipart(client, sb, "p/multi.bin", os.urandom(11 * MiB), part=5 * MiB)
        copies = copies_of(await list_prefix(client, sb, "p/", retry))
        assert fixture_simcore.source_s3.same_endpoint_as(other)
        copier = ObjectCopier(client, client, sb, db, retry=retry, server_side=True)
        outcomes = {o.dst_key: o for o in await copier.copy_all([(c, None) for c in copies])}
        assert outcomes["p/small.txt"].action == "server-side" and outcomes["p/small.txt"].bytes_sent == 0
        assert outcomes["p/multi.bin"].action == "copied"  # streamed: server part copies can't be verified
        copied = await list_prefix(client, db, "p/", retry)
        assert all(copied[c.dst_key] == ObjectState(c.size, c.etag) for c in copies)


async def test_a_changed_source_is_refused_by_name(clients) -> None:
    src, dst, sb, db = clients
    await src.put_object(Bucket=sb, Key="p/n/moving.txt", Body=b"first")
    [copy] = copies_of(await list_prefix(src, sb, "p/", retry))
    await src.put_object(Bucket=sb, Key="p/n/moving.txt", Body=b"second version")
    copier = ObjectCopier(src, dst, sb, db, retry=retry)
    with pytest.raises(Exception, match="p/n/moving.txt: source object changed since the plan"):
        await copier.copy_all([(copy, None)])
    assert await list_prefix(dst, db, "p/", retry) == {}


def test_batches_bound_count_and_bytes_and_isolate_large_files() -> None:
    items = [(ObjectCopy(src_key=f"k{i}", dst_key=f"k{i}", size=10, etag="e", file_id="f"), None) for i in range(25)]
    items.append((ObjectCopy(src_key="big", dst_key="big", size=100, etag="e-2", file_id="f"), None))
    batches = batch_transfers(items, large=100, max_files=10, max_bytes=55)
    assert [len(b) for b in batches] == [1, 5, 5, 5, 5, 5]
    assert batches[0][0][0].dst_key == "big"
    assert sorted(i[0].dst_key for b in batches for i in b) == sorted(i[0].dst_key for i in items)


def test_transient_errors_are_told_apart() -> None:
    def error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert is_transient(error("SlowDown", 503)) and is_transient(error("InternalError", 500))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(error("AccessDenied", 403)) and not is_transient(error("NoSuchBucket", 404))
