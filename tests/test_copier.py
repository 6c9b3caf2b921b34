"""Copying objects between two real SeaweedFS servers: skip, layouts, resume, server-side copy; and
with Ceph's RADOS Gateway on either side, where it answers differently."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator

import pytest
from botocore.exceptions import ClientError

from projmig.buckets import ObjectState, list_prefix, list_uploads
from projmig.copier import MARKER, CopyFailures, ObjectCopier
from projmig.marks import COPY_MARK, ledger_key, mark_of, write_record
from projmig.objects import compare_with_destination
from projmig.plan import ObjectCopy
from projmig.s3 import Retrier, is_transient, s3_client
from projmig.s3data import data_path
from projmig.sandbox import CephServer, Sandbox
from projmig.settings import S3Settings

from .conftest import CEPH, SEAWEEDFS, Simcore, empty_and_remove, unique, upload_started_by_projmig
from .faults.proxy import FaultProxy

MiB = 1024 * 1024
retry = Retrier(attempts=3, timeout=60, initial_wait=0.05)


async def put_multipart(client, bucket: str, key: str, data: bytes, part: int) -> str:
    upload = await client.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, len(data), part), 1):
        resp = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data[start:start + part])
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})
    resp = await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts})
    return (resp.get("ETag") or "").strip('"')


async def sha256(client, bucket: str, key: str) -> str:
    resp = await client.get_object(Bucket=bucket, Key=key)
    return hashlib.sha256(await resp["Body"].read()).hexdigest()


def copies_of(listing: dict[str, ObjectState]) -> list[ObjectCopy]:
    return [ObjectCopy(src_key=k, dst_key=k, size=s.size, etag=s.etag, file_id=k) for k, s in sorted(listing.items())]


async def test_copies_keep_etags_and_bytes(bucket_clients) -> None:
    src, dst, sb, db = bucket_clients
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
        head = await dst.head_object(Bucket=db, Key=c.dst_key)  # single PUT or multipart: marked as ours
        assert head["Metadata"][COPY_MARK] == "source=p;copy=p", c.dst_key
    there, todo = await compare_with_destination(dst, db, copies, retry)
    assert len(there) == len(copies) and todo == []


async def test_large_single_part_object_is_rechunked_and_marked(bucket_clients) -> None:
    src, dst, sb, db = bucket_clients
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


async def test_interrupted_multipart_upload_is_continued(bucket_clients, destination_bucket) -> None:
    src, _, sb, _ = bucket_clients
    dst, db = destination_bucket
    data = os.urandom(31 * MiB)
    await put_multipart(src, sb, "p/n/resume.bin", data, part=6 * MiB)
    [copy] = copies_of(await list_prefix(src, sb, "p/", retry))
    mark = mark_of(copy.src_key, copy.dst_key)
    # an older attempt of this migration left a stale upload of the key, and the last one got three
    # of six parts across before it died; each was recorded as projmig records its uploads
    stale = await dst.create_multipart_upload(Bucket=db, Key=copy.dst_key, Metadata={COPY_MARK: mark})
    upload = await dst.create_multipart_upload(Bucket=db, Key=copy.dst_key, Metadata={COPY_MARK: mark})
    await write_record(dst, db, copy.dst_key, mark, retry, uploads={stale["UploadId"], upload["UploadId"]})
    for number in (1, 2, 3):
        await dst.upload_part(Bucket=db, Key=copy.dst_key, UploadId=upload["UploadId"], PartNumber=number,
                              Body=data[(number - 1) * 6 * MiB:number * 6 * MiB])
    # someone else (a destination user) has an upload of the same key open: not this migration's
    theirs = await dst.create_multipart_upload(Bucket=db, Key=copy.dst_key)
    await dst.upload_part(Bucket=db, Key=copy.dst_key, UploadId=theirs["UploadId"], PartNumber=1,
                          Body=data[:6 * MiB])
    copier = ObjectCopier(src, dst, sb, db, retry=retry, multipart_threshold=8 * MiB)
    [outcome] = await copier.copy_all([(copy, None)])
    assert outcome.resumed_parts == 3
    assert outcome.bytes_sent == len(data) - 18 * MiB
    assert outcome.etag == copy.etag
    assert await sha256(dst, db, copy.dst_key) == hashlib.sha256(data).hexdigest()
    assert (await dst.head_object(Bucket=db, Key=copy.dst_key))["Metadata"][COPY_MARK] == mark
    # the resumed one completed, the stale one aborted, the other one's left alone; the record gone
    assert [u["UploadId"] for u in await list_uploads(dst, db, "p/", retry)] == [theirs["UploadId"]]
    assert ledger_key(copy.dst_key) not in await list_prefix(dst, db, "p/", retry)


async def test_server_side_copy_on_the_same_endpoint(fixture_simcore: Simcore) -> None:
    other = await fixture_simcore.sandbox.source.create_bucket(fixture_simcore.source_s3.bucket + "-b")
    async with s3_client(fixture_simcore.source_s3) as client:
        sb, db = fixture_simcore.source_s3.bucket, other.bucket
        # the source is itself a copy: the copy bears this migration's mark only (one request: the
        # source's own metadata and content headers are not read, and S3's REPLACE resets them)
        await client.put_object(Bucket=sb, Key="p/small.txt", Body=b"x" * 5000, ContentType="text/plain",
                                Metadata={"origin": "lab", COPY_MARK: "source=a;copy=p"})
        await put_multipart(client, sb, "p/multi.bin", os.urandom(11 * MiB), part=5 * MiB)
        copies = copies_of(await list_prefix(client, sb, "p/", retry))
        assert fixture_simcore.source_s3.same_endpoint_as(other)
        copier = ObjectCopier(client, client, sb, db, retry=retry, server_side=True)
        outcomes = {o.dst_key: o for o in await copier.copy_all([(c, None) for c in copies])}
        assert outcomes["p/small.txt"].action == "server-side" and outcomes["p/small.txt"].bytes_sent == 0
        assert outcomes["p/multi.bin"].action == "copied"  # streamed: server part copies can't be verified
        copied = await list_prefix(client, db, "p/", retry)
        assert all(copied[c.dst_key] == ObjectState(c.size, c.etag) for c in copies)
        head = await client.head_object(Bucket=db, Key="p/small.txt")
        assert head["Metadata"] == {COPY_MARK: "source=p;copy=p"} and head["ContentType"] != "text/plain"


async def test_one_buffer_reused_for_objects_one_after_another_sends_each_its_own_bytes(bucket_clients) -> None:
    """The budget's buffers are reused (projmig.budget): a smaller object read into the buffer a larger
    one left sends its own bytes only, and every buffer is given back, after a failure too."""
    src, dst, sb, db = bucket_clients
    sizes = [3 * MiB + 5, 2 * MiB, MiB + 3, 700_000, 64 * 1024, 5, 0]
    for i, size in enumerate(sizes):
        await src.put_object(Bucket=sb, Key=f"p/r/{i}.bin", Body=os.urandom(size))
    copies = sorted(copies_of(await list_prefix(src, sb, "p/r/", retry)), key=lambda c: -c.size)
    copier = ObjectCopier(src, dst, sb, db, retry=retry, concurrency=1, memory_limit=16 * MiB)
    outcomes = await copier.copy_all([(c, None) for c in copies])
    assert [o.action for o in outcomes] == ["copied"] * len(sizes)
    assert copier.budget.used == 0 and len(copier.budget._kept) <= 2  # (the 3 MiB one served them all but 0 bytes)
    copied = await list_prefix(dst, db, "p/r/", retry)
    for c in copies:
        assert copied[c.dst_key] == ObjectState(size=c.size, etag=c.etag), c.dst_key
        assert await sha256(src, sb, c.src_key) == await sha256(dst, db, c.dst_key), c.dst_key
    # a source that changed since the plan (more bytes than planned) fails that object; its buffer comes back
    await src.put_object(Bucket=sb, Key="p/r/5.bin", Body=os.urandom(MiB))
    again = [dataclasses.replace(c, dst_key="q/" + c.dst_key) for c in copies if c.src_key == "p/r/5.bin"]
    with pytest.raises(Exception, match="source object changed since the plan"):
        await copier.copy_all([(c, None) for c in again])
    assert copier.budget.used == 0


async def test_a_changed_source_is_refused_by_name(bucket_clients) -> None:
    src, dst, sb, db = bucket_clients
    await src.put_object(Bucket=sb, Key="p/n/moving.txt", Body=b"first")
    [copy] = copies_of(await list_prefix(src, sb, "p/", retry))
    await src.put_object(Bucket=sb, Key="p/n/moving.txt", Body=b"second version")
    copier = ObjectCopier(src, dst, sb, db, retry=retry)
    with pytest.raises(Exception, match="p/n/moving.txt: source object changed since the plan"):
        await copier.copy_all([(copy, None)])
    assert await list_prefix(dst, db, "p/", retry) == {}


@pytest.fixture(params=[SEAWEEDFS, CEPH])
async def one_endpoint(request: pytest.FixtureRequest, sandbox: Sandbox) -> AsyncIterator[tuple[S3Settings, S3Settings, int]]:
    """(source bucket, destination bucket, the server's S3 port): two buckets of one SeaweedFS or one
    Ceph RADOS Gateway, where projmig copies server-side."""
    store = request.getfixturevalue("ceph") if request.param == CEPH else sandbox.source.s3
    src, dst = await store.create_bucket(unique("ssc-src")), await store.create_bucket(unique("ssc-dst"))
    try:
        yield src, dst, store.s3_port
    finally:
        await empty_and_remove(src)
        await empty_and_remove(dst)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "botocore"])
async def test_a_server_side_copy_is_one_request_per_object(one_endpoint, lean: bool) -> None:
    """Counted at the server (a proxy in front of it): one CopyObject per single-part object, on
    either data path; the copy bears the mark, in the form rollback reads it (user metadata)."""
    src, dst, port = one_endpoint
    async with s3_client(src) as client:
        for i in range(6):
            await client.put_object(Bucket=src.bucket, Key=f"p/n/{i} ü.txt", Body=os.urandom(1000 + i),
                                    ContentType="text/plain", Metadata={"origin": "lab", COPY_MARK: "source=a;copy=p"})
        copies = copies_of(await list_prefix(client, src.bucket, "p/", retry))
    with FaultProxy("127.0.0.1", port, name="s3", http=True) as proxy:
        via = src.model_copy(update={"endpoint": proxy.endpoint})
        async with s3_client(via) as client, data_path(via, client, lean=lean) as data:
            copier = ObjectCopier(client, client, src.bucket, dst.bucket, retry=retry, server_side=True,
                                  src_data=data, dst_data=data)
            outcomes = await copier.copy_all([(c, None) for c in copies])
            sent = [(r.method, r.target.split("?")[0]) for r in proxy.requests]
    assert {o.action for o in outcomes} == {"server-side"}
    assert len(sent) == len(copies) and {method for method, _ in sent} == {"PUT"}, sent
    assert all(target.startswith(f"/{dst.bucket}/p/n/") for _, target in sent), sent
    async with s3_client(dst) as client:
        assert await list_prefix(client, dst.bucket, "p/", retry) == {c.dst_key: ObjectState(c.size, c.etag) for c in copies}
        for c in copies:
            assert (await client.head_object(Bucket=dst.bucket, Key=c.dst_key))["Metadata"] == {COPY_MARK: "source=p;copy=p"}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "botocore"])
async def test_a_source_changed_since_the_plan_is_not_copied_server_side(one_endpoint, lean: bool) -> None:
    """The copy is held to the planned ETag: a changed source is refused by the server (Ceph 16.2
    reads the condition under its own name), by name, and nothing is written."""
    src, dst, _ = one_endpoint
    async with s3_client(src) as client, data_path(src, client, lean=lean) as data:
        await client.put_object(Bucket=src.bucket, Key="p/n/moving.txt", Body=b"first")
        await client.put_object(Bucket=src.bucket, Key="p/n/going.txt", Body=b"here")
        moving, going = copies_of(await list_prefix(client, src.bucket, "p/", retry))[::-1]
        await client.put_object(Bucket=src.bucket, Key="p/n/moving.txt", Body=b"second version")
        await client.delete_object(Bucket=src.bucket, Key="p/n/going.txt")
        copier = ObjectCopier(client, client, src.bucket, dst.bucket, retry=retry, server_side=True,
                              src_data=data, dst_data=data)
        with pytest.raises(CopyFailures) as failed:
            await copier.copy_all([(moving, None), (going, None)])
        assert "p/n/moving.txt: source object changed since the plan (its ETag is no longer the planned one" in str(failed.value)
        assert "p/n/going.txt: source object changed since the plan (it is gone" in str(failed.value)
        assert not any(f.transient for f in failed.value.failures)
        assert await list_prefix(client, dst.bucket, "p/", retry) == {}


def test_transient_errors_are_told_apart() -> None:
    def error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert is_transient(error("SlowDown", 503)) and is_transient(error("InternalError", 500))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(error("AccessDenied", 403)) and not is_transient(error("NoSuchBucket", 404))


# -- Ceph's RADOS Gateway (Ceph 16.2): where it answers differently from AWS and SeaweedFS ----------


@pytest.fixture
async def ceph_bucket(ceph: CephServer) -> AsyncIterator[S3Settings]:
    bucket = await ceph.create_bucket(unique("cephobj"))
    yield bucket
    await empty_and_remove(bucket)


async def test_ceph_completes_uploads_with_an_empty_etag_projmig_reads_it_back(bucket_clients, ceph_bucket) -> None:
    src, _, sb, _ = bucket_clients
    data = os.urandom(13 * MiB + 17)
    source_etag = await put_multipart(src, sb, "p/n/big.h5", data, part=6 * MiB)
    async with s3_client(ceph_bucket) as ceph:
        assert await put_multipart(ceph, ceph_bucket.bucket, "quirk/empty", b"x" * 10, part=MiB) == ""  # the quirk
        [copy] = copies_of(await list_prefix(src, sb, "p/", retry))
        copier = ObjectCopier(src, ceph, sb, ceph_bucket.bucket, retry=retry, multipart_threshold=8 * MiB)
        [outcome] = await copier.copy_all([(copy, None)])
        assert outcome.etag == source_etag
        assert (await list_prefix(ceph, ceph_bucket.bucket, "p/", retry))[copy.dst_key] == ObjectState(len(data), source_etag)
        assert await sha256(ceph, ceph_bucket.bucket, copy.dst_key) == hashlib.sha256(data).hexdigest()


async def test_ceph_ignores_part_number_yet_a_copy_resumes_part_by_part(bucket_clients, ceph_bucket) -> None:
    _, dst, _, db = bucket_clients
    data = os.urandom(31 * MiB)
    async with s3_client(ceph_bucket) as ceph:
        await put_multipart(ceph, ceph_bucket.bucket, "p/n/resume.bin", data, part=6 * MiB)
        source_etag = (await ceph.head_object(Bucket=ceph_bucket.bucket, Key="p/n/resume.bin"))["ETag"].strip('"')
        assert source_etag.endswith("-6")
        head = await ceph.head_object(Bucket=ceph_bucket.bucket, Key="p/n/resume.bin", PartNumber=1)
        assert head["ContentLength"] == len(data) and "PartsCount" not in head  # the quirk: the whole object
        [copy] = copies_of(await list_prefix(ceph, ceph_bucket.bucket, "p/", retry))
        # an earlier run got three of six parts across before it died
        upload = {"UploadId": await upload_started_by_projmig(dst, db, copy.src_key, copy.dst_key)}
        for number in (1, 2, 3):
            await dst.upload_part(Bucket=db, Key=copy.dst_key, UploadId=upload["UploadId"], PartNumber=number,
                                  Body=data[(number - 1) * 6 * MiB:number * 6 * MiB])
        copier = ObjectCopier(ceph, dst, ceph_bucket.bucket, db, retry=retry, multipart_threshold=8 * MiB)
        [outcome] = await copier.copy_all([(copy, None)])
        fresh = dataclasses.replace(copy, dst_key="p/n/fresh copy.bin")  # no earlier upload to learn from
        [fresh_outcome] = await copier.copy_all([(fresh, None)])
    assert outcome.resumed_parts == 3 and outcome.bytes_sent == len(data) - 18 * MiB
    # the guessed layout (the smallest whole MiB giving 6 parts for 31 MiB: 6 MiB) was the source's
    assert outcome.etag == fresh_outcome.etag == source_etag
    for key in (copy.dst_key, fresh.dst_key):
        assert await sha256(dst, db, key) == hashlib.sha256(data).hexdigest()
    assert await list_uploads(dst, db, "p/", retry) == []


async def test_an_upload_in_another_layout_is_continued_in_its_own(bucket_clients, ceph_bucket) -> None:
    """The layout cannot be asked from Ceph: the kept upload's parts (ListParts) and the size tell it."""
    _, dst, _, db = bucket_clients
    data = os.urandom(23 * MiB)
    async with s3_client(ceph_bucket) as ceph:
        await put_multipart(ceph, ceph_bucket.bucket, "p/n/odd.bin", data, part=8 * MiB)
        [copy] = copies_of(await list_prefix(ceph, ceph_bucket.bucket, "p/", retry))
        upload = {"UploadId": await upload_started_by_projmig(dst, db, copy.src_key, copy.dst_key, Metadata={MARKER: copy.etag})}
        for number in (1, 2):  # an earlier run in 5 MiB parts
            await dst.upload_part(Bucket=db, Key=copy.dst_key, UploadId=upload["UploadId"], PartNumber=number,
                                  Body=data[(number - 1) * 5 * MiB:number * 5 * MiB])
        copier = ObjectCopier(ceph, dst, ceph_bucket.bucket, db, retry=retry, multipart_threshold=8 * MiB)
        [outcome] = await copier.copy_all([(copy, None)])
    assert outcome.resumed_parts == 2 and outcome.bytes_sent == len(data) - 10 * MiB
    assert outcome.etag.endswith("-5")  # 23 MiB in 5 MiB parts
    assert await sha256(dst, db, copy.dst_key) == hashlib.sha256(data).hexdigest()
    there, todo = await compare_with_destination(dst, db, [copy], retry)  # marked with the source ETag
    assert len(there) == 1 and not todo


async def test_ceph_server_side_copy_answers_an_unquoted_etag(ceph: CephServer, ceph_bucket) -> None:
    other = await ceph.create_bucket(unique("cephobj"))
    async with s3_client(ceph_bucket) as client:
        sb = ceph_bucket.bucket
        await client.put_object(Bucket=sb, Key="p/small.txt", Body=b"x" * 5000)
        raw = await client.copy_object(Bucket=other.bucket, Key="quirk", CopySource={"Bucket": sb, "Key": "p/small.txt"})
        assert not raw["CopyObjectResult"]["ETag"].startswith('"')  # the quirk
        [copy] = copies_of(await list_prefix(client, sb, "p/", retry))
        copier = ObjectCopier(client, client, sb, other.bucket, retry=retry, server_side=True)
        [outcome] = await copier.copy_all([(copy, None)])
        assert outcome.action == "server-side" and outcome.etag == copy.etag
        assert (await list_prefix(client, other.bucket, "p/", retry))["p/small.txt"] == ObjectState(5000, copy.etag)
    await empty_and_remove(other)


async def test_a_copy_the_server_did_not_hold_to_the_etag_is_removed(ceph: CephServer, ceph_bucket) -> None:
    """A server that ignores the copy's condition (Ceph 16.2 asked under S3's name only) copies a
    changed source: the copy's ETag tells, the source's HEAD says why, and the marked copy goes."""
    other = await ceph.create_bucket(unique("cephssc"))
    try:
        async with s3_client(ceph_bucket) as client:
            sb = ceph_bucket.bucket
            await client.put_object(Bucket=sb, Key="p/n/moving.txt", Body=b"first")
            [copy] = copies_of(await list_prefix(client, sb, "p/", retry))
            await client.put_object(Bucket=sb, Key="p/n/moving.txt", Body=b"second version")
            copier = ObjectCopier(client, client, sb, other.bucket, retry=retry, server_side=True)  # plain BotoData
            with pytest.raises(CopyFailures, match=r"p/n/moving.txt: source object changed since the plan \(ETag \w+, 14 bytes; "
                               r"planned \w+, 5 bytes\): rerun the migration \(the server copied it anyway: removed"):
                await copier.copy_all([(copy, None)])
            assert await list_prefix(client, other.bucket, "p/", retry) == {}
    finally:
        await empty_and_remove(other)


async def test_ceph_errors_without_a_message_are_still_explained(bucket_clients, ceph_bucket) -> None:
    _, dst, _, db = bucket_clients
    async with s3_client(ceph_bucket) as ceph:
        await ceph.put_object(Bucket=ceph_bucket.bucket, Key="p/gone.bin", Body=b"soon gone")
        [copy] = copies_of(await list_prefix(ceph, ceph_bucket.bucket, "p/", retry))
        with pytest.raises(ClientError) as raw:
            await ceph.list_parts(Bucket=ceph_bucket.bucket, Key="p/gone.bin", UploadId="2~no-such-upload")
        assert raw.value.response["Error"]["Code"] == "NoSuchKey" and not raw.value.response["Error"].get("Message")
        await ceph.delete_object(Bucket=ceph_bucket.bucket, Key="p/gone.bin")
        copier = ObjectCopier(ceph, dst, ceph_bucket.bucket, db, retry=retry)
        with pytest.raises(CopyFailures) as failed:
            await copier.copy_all([(copy, None)])
    assert "p/gone.bin: NoSuchKey: the object does not exist (HTTP 404)" in str(failed.value)
