"""Objects whose ETags are not MD5s of their bytes (AWS SSE-KMS and SSE-C): an S3 proxy rewrites
every ETag the server sends the way SSE-KMS makes them look (32 hex digits, ``-N`` for multipart,
unrelated to the bytes; UploadPart's answers too). The preflight's probes see it (a source object
read whole; a part uploaded into the destination's probe upload, then aborted) and the copy is
proven by SHA-256 read back from the destination; a rerun skips what is there;
``verification=etag`` is refused before any byte moves, naming the provider and the object."""

from __future__ import annotations

import hashlib

import pytest

from flows.migrate import migrate_project
from projmig.errors import PreflightError
from projmig.s3 import s3_client

from .conftest import MiB, Faulty, destination_keys, open_uploads, row_counts

pytestmark = pytest.mark.usefixtures("prefect")


def like_sse_kms(etag: str) -> str:
    return hashlib.md5(b"sse-kms " + etag.encode()).hexdigest()


async def digests(s3, keys) -> dict[str, str]:
    async with s3_client(s3) as client:
        found = {}
        for key in keys:
            resp = await client.get_object(Bucket=s3.bucket, Key=key)
            found[key] = hashlib.sha256(await resp["Body"].read()).hexdigest()
        return found


async def test_etags_that_are_not_md5s_are_verified_by_sha256(faulty: Faulty) -> None:
    sample = await faulty.sample(files=5, directory_objects=2, multipart_size=12 * MiB, multipart_part_size=5 * MiB)
    faulty.proxies.src_s3.rewrite_etags(like_sse_kms)
    settings = faulty.settings(sample.uuid, multipart_threshold=8 * MiB)
    direct = faulty.direct(sample.uuid)

    with pytest.raises(PreflightError) as refused:
        await migrate_project(faulty.settings(sample.uuid, multipart_threshold=8 * MiB, verification="etag"))
    message = str(refused.value)
    assert "options.verification=etag cannot work: source bucket" in message and "(provider MINIO): object" in message
    assert sample.uuid in message and "is not the MD5 of its bytes" in message
    assert await destination_keys(direct) == {} and await open_uploads(direct) == []

    report = await migrate_project(settings)
    assert report.status == "migrated" and report.objects_copied == len(sample.objects)
    assert "SHA-256" in report.verification and "is not its MD5" in report.verification
    assert await digests(direct.destination.s3, sample.objects) == await digests(direct.source.s3, sample.objects)
    assert (await row_counts(direct, [sample.uuid]))["file_meta_data"] == len(sample.file_ids)
    assert await open_uploads(direct) == []

    again = await migrate_project(settings)  # no copy -> mismatch -> delete loop: what is there stays
    assert again.status == "already-migrated" and again.objects_copied == 0


async def test_a_destination_whose_etags_are_not_md5s_is_seen_by_the_write_probe(faulty: Faulty) -> None:
    # single-part objects only: CompleteMultipartUpload would send the rewritten part ETags back, and
    # the proxy cannot map a request's body back (it is signed); a real SSE-KMS server takes its own
    sample = await faulty.sample(files=4, directory_objects=2, multipart_size=0)
    faulty.proxies.dst_s3.rewrite_etags(like_sse_kms)
    direct = faulty.direct(sample.uuid)

    with pytest.raises(PreflightError) as refused:
        await migrate_project(faulty.settings(sample.uuid, verification="etag"))
    message = str(refused.value)
    assert "options.verification=etag cannot work: destination bucket" in message, message
    assert f"(provider MINIO): a part of probe upload {sample.uuid}/" in message and "is not the MD5" in message
    assert await destination_keys(direct) == {} and await open_uploads(direct) == []

    settings = faulty.settings(sample.uuid)
    report = await migrate_project(settings)
    assert report.status == "migrated" and report.objects_copied == len(sample.objects)
    assert "SHA-256" in report.verification and "destination (MINIO): ETags are not MD5s" in report.verification
    assert "ETag is its MD5" in report.verification  # the source's are
    assert await digests(direct.destination.s3, sample.objects) == await digests(direct.source.s3, sample.objects)
    assert set(await destination_keys(direct)) == set(sample.objects)  # the probe left nothing
    assert await open_uploads(direct) == []

    again = await migrate_project(settings)
    assert again.status == "already-migrated" and again.objects_copied == 0


async def test_md5_etags_on_both_sides_are_what_proves_a_copy(faulty: Faulty) -> None:
    sample = await faulty.sample(files=2, directory_objects=0, multipart_size=0)
    report = await migrate_project(faulty.settings(sample.uuid))
    assert report.verification.startswith("verification: ETags (MD5s on both sides)"), report.verification
    assert "destination (MINIO): ETags are MD5s" in report.verification
