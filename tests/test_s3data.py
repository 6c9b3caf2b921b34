"""The lean data path (aiohttp + our own SigV4) against botocore's, on a real SeaweedFS: the same
answers, the same errors, and the copier on top of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from projmig.marks import COPY_MARK
from projmig.buckets import ObjectState, list_prefix
from projmig.copier import ObjectCopier
from projmig.plan import ObjectCopy
from projmig.s3 import Retrier, s3_client
from projmig.s3data import BotoData, LeanData, data_path, lean_possible
from projmig.settings import Provider

from .conftest import Simcore

MiB = 1024 * 1024
retry = Retrier(attempts=3, timeout=60, initial_wait=0.05)
KEYS = [
    "p/n/plain.bin", "p/n/with space.txt", "p/n/ünïcode ü.dat", "p/n/a+b=c.bin", "p/n/100% sure.txt",
    "p/n/hash#tag.csv", "p/n/what?&x=1.txt", "p/n/tilde~(paren)[br]{c}.bin", "p/n/semi;colon,comma'q\".txt",
]


def body(data: bytes) -> memoryview:
    """A body to send, as the copier gives it: a view of a (reused) buffer."""
    return memoryview(bytearray(data))


async def read(reader, bucket: str, key: str, size: int, **kw) -> tuple[dict, bytes, int]:
    """(answer, the bytes received into a buffer of ``size``, how many the body had)."""
    into = memoryview(bytearray(size))
    answer, n = await reader.get(bucket, key, into, **kw)
    return answer, bytes(into[:n]), n


@pytest.fixture
async def sides(fixture_simcore: Simcore):
    s3 = fixture_simcore.source_s3
    assert lean_possible(s3)
    async with s3_client(s3) as client, data_path(s3, client) as lean:
        assert isinstance(lean, LeanData)
        yield s3.bucket, lean, BotoData(client), client


async def test_lean_and_botocore_read_and_write_the_same(sides) -> None:
    bucket, lean, boto, client = sides
    for i, key in enumerate(KEYS):
        data = os.urandom(1000 * i)
        writer = lean if i % 2 else boto
        put = await writer.put(bucket, key, body(data), ContentType="text/x-test", CacheControl="no-cache",
                               Metadata={"origin": "projmig-test"})
        assert put["ETag"].strip('"') == hashlib.md5(data).hexdigest()
        for reader in (lean, boto):
            answer, got, n = await read(reader, bucket, key, len(data))
            assert n == len(data) and got == data, (key, reader)
            assert answer["ETag"] == put["ETag"] and answer["ContentLength"] == len(data)
            assert answer["ContentType"] == "text/x-test" and answer["CacheControl"] == "no-cache"
            assert answer["Metadata"] == {"origin": "projmig-test"}
    listed = await list_prefix(client, bucket, "p/n/", retry)
    assert set(listed) == set(KEYS)
    assert await list_prefix(client, bucket, "p/n/", retry, data=lean) == listed  # odd keys come back the same


async def test_listings_page_alike(sides) -> None:
    bucket, lean, boto, client = sides
    keys = [f"p/l/{i:04d} + ü%.bin" for i in range(1003)]  # two pages of up to 1,000

    async def put(start: int) -> None:
        for key in keys[start::16]:
            await lean.put(bucket, key, body(key.encode()))

    await asyncio.gather(*(put(i) for i in range(16)))
    first, token = await lean.list_page(bucket, "p/l/", None)
    assert len(first) == 1000 and token is not None
    assert (first, token) == await boto.list_page(bucket, "p/l/", None)
    rest, last = await lean.list_page(bucket, "p/l/", token)
    assert len(rest) == 3 and last is None
    listed = await list_prefix(client, bucket, "p/l/", retry, data=lean)
    assert listed == await list_prefix(client, bucket, "p/l/", retry)
    assert sorted(listed) == keys and listed[keys[5]].etag == hashlib.md5(keys[5].encode()).hexdigest()
    assert await lean.list_page(bucket, "p/none/", None) == ([], None)


async def test_ranges_and_conditions(sides) -> None:
    bucket, lean, boto, client = sides
    data = os.urandom(3 * MiB + 5)
    etag = (await lean.put(bucket, "p/r/obj", body(data)))["ETag"]
    for reader in (lean, boto):
        _, got, n = await read(reader, bucket, "p/r/obj", MiB, byte_range=f"bytes={MiB}-{2 * MiB - 1}", if_match=etag)
        assert n == MiB and got == data[MiB:2 * MiB]
    # a body longer than expected is counted, not stored past the buffer: the caller sees the size changed
    for reader in (lean, boto):
        into = bytearray(10)
        _, n = await reader.get(bucket, "p/r/obj", memoryview(into))
        assert n == len(data), reader


async def test_sha256_streams_the_bytes_on_either_path(sides) -> None:
    bucket, lean, boto, client = sides
    data = os.urandom(2 * MiB + 17)  # more than one read chunk, not a multiple of it
    await client.put_object(Bucket=bucket, Key="p/h/obj", Body=data)
    await client.put_object(Bucket=bucket, Key="p/h/empty", Body=b"")
    for reader in (lean, boto):
        assert await reader.sha256(bucket, "p/h/obj") == hashlib.sha256(data).hexdigest(), reader
        assert await reader.sha256(bucket, "p/h/empty") == hashlib.sha256(b"").hexdigest(), reader
        with pytest.raises(ClientError) as caught:
            await reader.sha256(bucket, "p/h/missing")
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


async def test_server_side_copy_on_either_path(sides) -> None:
    bucket, lean, boto, client = sides
    for i, (path, key) in enumerate(((lean, KEYS[1]), (boto, KEYS[2]), (lean, KEYS[8]))):
        data = os.urandom(3000 + i)
        put = await client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/x-test",
                                      Metadata={"origin": "projmig-test"})
        # the copy's headers replace the source's (as projmig gives it its mark)
        copied = await path.copy(bucket, key, bucket, f"p/c/{i} {key}", if_match=put["ETag"],
                                 ContentType="text/x-copy", Metadata={"origin": "projmig-test", "projmig-copy": "m"})
        assert copied["CopyObjectResult"]["ETag"].strip('"') == hashlib.md5(data).hexdigest(), path
        got = await client.get_object(Bucket=bucket, Key=f"p/c/{i} {key}")
        assert await got["Body"].read() == data
        assert got["Metadata"] == {"origin": "projmig-test", "projmig-copy": "m"}, path
        assert got["ContentType"] == "text/x-copy", path
    errors = {}
    for path in (lean, boto):
        for case, (key, etag) in {"changed": (KEYS[1], '"0123456789abcdef0123456789abcdef"'),
                                  "missing": ("p/c/missing", '"0123456789abcdef0123456789abcdef"')}.items():
            with pytest.raises(ClientError) as caught:
                await path.copy(bucket, key, bucket, "p/c/never", if_match=etag)
            errors.setdefault(case, set()).add(
                (caught.value.response["Error"]["Code"], caught.value.response["ResponseMetadata"]["HTTPStatusCode"]))
    assert all(len(found) == 1 for found in errors.values()), errors  # both paths report the same
    assert {status for found in errors.values() for _, status in found} <= {404, 412}
    assert "p/c/never" not in await list_prefix(client, bucket, "p/c/", retry)


async def test_errors_are_botocore_client_errors_with_the_same_code(sides, fixture_simcore: Simcore) -> None:
    bucket, lean, boto, client = sides
    await lean.put(bucket, "p/e/obj", body(b"abc"))
    cases = [
        dict(key="p/e/missing", kw={}),
        dict(key="p/e/obj", kw={"if_match": '"0123456789abcdef0123456789abcdef"'}),
    ]
    for case in cases:
        errors = []
        for reader in (lean, boto):
            with pytest.raises(ClientError) as caught:
                await read(reader, bucket, case["key"], 3, **case["kw"])
            errors.append(caught.value)
        codes = {e.response["Error"]["Code"] for e in errors}
        statuses = {e.response["ResponseMetadata"]["HTTPStatusCode"] for e in errors}
        assert len(codes) == 1 and len(statuses) == 1, (case, [e.response for e in errors])
    wrong = fixture_simcore.source_s3.model_copy(update={"secret_key": SecretStr("not-the-secret")})
    async with s3_client(wrong) as bad_client, data_path(wrong, bad_client) as bad_lean:
        for writer in (bad_lean, BotoData(bad_client)):
            with pytest.raises(ClientError) as caught:
                await writer.put(bucket, "p/e/denied", body(b"x"))
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        listed = await list_prefix(client, bucket, "p/e/", retry)
        assert "p/e/denied" not in listed


async def test_parts_with_content_md5(sides) -> None:
    bucket, lean, boto, client = sides
    parts = [os.urandom(5 * MiB), os.urandom(MiB + 3)]
    upload = await client.create_multipart_upload(Bucket=bucket, Key="p/m/obj")
    done = []
    for number, part in enumerate(parts, 1):
        md5 = hashlib.md5(part).digest()
        resp = await lean.upload_part(bucket, "p/m/obj", upload["UploadId"], number, body(part),
                                      content_md5=base64.b64encode(md5).decode())
        assert resp["ETag"].strip('"') == md5.hex()
        done.append({"PartNumber": number, "ETag": resp["ETag"]})
    # a wrong Content-MD5 is refused by the server
    with pytest.raises(ClientError):
        await lean.upload_part(bucket, "p/m/obj", upload["UploadId"], 3, body(b"xyz"),
                               content_md5=base64.b64encode(b"0" * 16).decode())
    await client.complete_multipart_upload(Bucket=bucket, Key="p/m/obj", UploadId=upload["UploadId"],
                                           MultipartUpload={"Parts": done})
    _, got, n = await read(boto, bucket, "p/m/obj", sum(map(len, parts)))
    assert got == b"".join(parts)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "botocore"])
async def test_copier_on_either_path(fixture_simcore: Simcore, lean: bool) -> None:
    src_s3, dst_s3 = fixture_simcore.source_s3, fixture_simcore.destination_s3
    sb, db = src_s3.bucket, dst_s3.bucket
    async with (
        s3_client(src_s3) as src, s3_client(dst_s3) as dst,
        data_path(src_s3, src, lean=lean) as src_data, data_path(dst_s3, dst, lean=lean) as dst_data,
    ):
        assert isinstance(src_data, LeanData) == lean
        for i, key in enumerate(KEYS):
            await src.put_object(Bucket=sb, Key=key, Body=os.urandom(100 * i), Metadata={"n": str(i)})
        await src.put_object(Bucket=sb, Key="p/n/large.bin", Body=os.urandom(11 * MiB + 1))  # copied in own parts
        listing = await list_prefix(src, sb, "p/", retry)
        copies = [ObjectCopy(src_key=k, dst_key=k, size=s.size, etag=s.etag, file_id=k) for k, s in sorted(listing.items())]
        copier = ObjectCopier(src, dst, sb, db, retry=retry, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                              part_concurrency=2, src_data=src_data, dst_data=dst_data)
        outcomes = await copier.copy_all([(c, None) for c in copies])
        assert {o.action for o in outcomes} == {"copied"}
        there = await list_prefix(dst, db, "p/", retry)
        assert {k: s.size for k, s in there.items()} == {k: s.size for k, s in listing.items()}
        for key in KEYS:
            assert there[key] == listing[key]
            head = await dst.head_object(Bucket=db, Key=key)
            assert head["Metadata"] == {"n": str(KEYS.index(key)), COPY_MARK: "source=p;copy=p"}  # carried, and marked
        src_bytes = await (await src.get_object(Bucket=sb, Key="p/n/large.bin"))["Body"].read()
        dst_bytes = await (await dst.get_object(Bucket=db, Key="p/n/large.bin"))["Body"].read()
        assert src_bytes == dst_bytes
        # a second pass skips everything by size and ETag
        again = await copier.copy_all([(c, ObjectState(size=there[c.dst_key].size, etag=there[c.dst_key].etag))
                                       for c in copies if not c.dst_key.endswith("large.bin")])
        assert {o.action for o in again} == {"skipped"}


def test_aws_keeps_botocore(fixture_simcore: Simcore) -> None:
    s3 = fixture_simcore.source_s3
    assert not lean_possible(s3.model_copy(update={"provider": Provider.AWS}))
    assert not lean_possible(s3.model_copy(update={"endpoint": None}))
