"""The copy step's decisions: what the destination already holds, from one listing of a real
SeaweedFS bucket (and a HEAD where projmig marked a re-chunked copy), and how the rest is batched."""

from __future__ import annotations

import hashlib

from projmig.buckets import ObjectState
from projmig.copier import MARKER
from projmig.objects import batch_transfers, compare_with_destination
from projmig.plan import ObjectCopy
from projmig.s3 import Retrier

retry = Retrier(attempts=3, timeout=60, initial_wait=0.05)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def test_the_destination_listing_decides_what_is_there_already(bucket_clients) -> None:
    _, dst, _, db = bucket_clients
    source_etag = "0" * 32 + "-2"  # a multipart source's, copied by projmig in parts of its own
    await dst.put_object(Bucket=db, Key="p/n/same.bin", Body=b"a" * 100)
    await dst.put_object(Bucket=db, Key="p/n/rechunked.bin", Body=b"b" * 100, Metadata={MARKER: source_etag})
    await dst.put_object(Bucket=db, Key="p/n/other.bin", Body=b"c" * 100)  # someone else's bytes
    await dst.put_object(Bucket=db, Key="p/n/short.bin", Body=b"d" * 50)
    planned = {
        "p/n/same.bin": md5(b"a" * 100),
        "p/n/rechunked.bin": source_etag,
        "p/n/other.bin": "f" * 32,
        "p/n/short.bin": md5(b"d" * 100),
        "p/n/missing.bin": "e" * 32,
    }
    copies = [ObjectCopy(src_key=k, dst_key=k, size=100, etag=e, file_id=k) for k, e in sorted(planned.items())]
    there, todo = await compare_with_destination(dst, db, copies, retry)
    assert sorted(o.dst_key for o in there) == ["p/n/rechunked.bin", "p/n/same.bin"]
    assert {o.action for o in there} == {"skipped"}
    assert {c.dst_key: state for c, state in todo} == {
        "p/n/missing.bin": None,
        "p/n/other.bin": ObjectState(100, md5(b"c" * 100)),
        "p/n/short.bin": ObjectState(50, md5(b"d" * 50)),
    }
    # a listing taken earlier in the run stands for its prefix: that prefix is not listed again
    [missing] = [c for c in copies if c.dst_key == "p/n/missing.bin"]
    earlier = {"p/": {missing.dst_key: ObjectState(missing.size, missing.etag)}}
    there, todo = await compare_with_destination(dst, db, [missing], retry, listed=earlier)
    assert [o.dst_key for o in there] == [missing.dst_key] and todo == []


def test_batches_bound_count_and_bytes_and_isolate_large_files() -> None:
    items = [(ObjectCopy(src_key=f"k{i}", dst_key=f"k{i}", size=10, etag="e", file_id="f"), None) for i in range(25)]
    items.append((ObjectCopy(src_key="big", dst_key="big", size=100, etag="e-2", file_id="f"), None))
    batches = batch_transfers(items, large=100, max_files=10, max_bytes=55)
    assert [len(b) for b in batches] == [1, 5, 5, 5, 5, 5]
    assert batches[0][0][0].dst_key == "big"
    assert sorted(i[0].dst_key for b in batches for i in b) == sorted(i[0].dst_key for i in items)
