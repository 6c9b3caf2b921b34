"""Objects whose ETags are not MD5s of their bytes (AWS SSE-KMS and SSE-C): an S3 proxy rewrites
every ETag the server sends the way SSE-KMS makes them look (32 hex digits, ``-N`` for multipart,
unrelated to the bytes; UploadPart's answers too). The preflight's probes see it (a source object
read whole; a part uploaded into the destination's probe upload, then aborted) and the copy is
proven otherwise; a rerun skips what is there; ``verification=etag`` is refused before any byte
moves, naming the provider and the object.

Proven otherwise: by S3's additional checksums where the source object has a stored full-object
checksum (here: SeaweedFS objects stored with ``ChecksumSHA256``/``ChecksumCRC32``) and the
destination validates and keeps them (SeaweedFS does; Ceph 16.2 ignores them); else by SHA-256 read
back from the destination."""

from __future__ import annotations

import base64
import hashlib
import zlib
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from flows.migrate import migrate_project
from projmig.errors import PreflightError
from projmig.copier import CopyFailures
from projmig.s3 import s3_client
from projmig import steps
from projmig.preflight import PreflightReport
from projmig.run import MigrationRun
from projmig.settings import MigrationSettings

from ..conftest import CEPH, SEAWEEDFS, copy_marks, expected_marks
from .conftest import MiB, Faulty, destination_keys, open_uploads, row_counts

pytestmark = pytest.mark.usefixtures("prefect")


async def preflight(settings: MigrationSettings) -> PreflightReport:
    """The preflight of a run (with its write probe), as a migration starts."""
    async with MigrationRun.open(settings, lock=False) as run:
        return await steps.preflight(run)


def like_sse_kms(etag: str) -> str:
    return hashlib.md5(b"sse-kms " + etag.encode()).hexdigest()


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


async def store_with_checksums(s3, keys: list[str]) -> dict[str, tuple[str, str]]:
    """Store each (single-part) object again, the same bytes (so the same MD5 ETag) with an S3
    checksum, SHA256 and CRC32 in turn: key -> (algorithm, value), as the server keeps it."""
    stored = {}
    async with s3_client(s3) as client:
        for i, key in enumerate(sorted(keys)):
            body = await (await client.get_object(Bucket=s3.bucket, Key=key))["Body"].read()
            name, value = ("SHA256", b64(hashlib.sha256(body).digest())) if i % 2 == 0 else (
                "CRC32", b64(zlib.crc32(body).to_bytes(4, "big")))
            await client.put_object(Bucket=s3.bucket, Key=key, Body=body, **{f"Checksum{name}": value})
            head = await client.head_object(Bucket=s3.bucket, Key=key, ChecksumMode="ENABLED")
            assert head.get(f"Checksum{name}") == value, head
            stored[key] = (name, value)
    return stored


async def stored_checksums(s3, keys) -> dict[str, tuple[str, str] | None]:
    async with s3_client(s3) as client:
        found = {}
        for key in keys:
            head = await client.head_object(Bucket=s3.bucket, Key=key, ChecksumMode="ENABLED")
            found[key] = next(((n, head[f"Checksum{n}"]) for n in ("SHA256", "CRC32") if head.get(f"Checksum{n}")), None)
        return found


async def single_part_keys(s3, keys) -> list[str]:
    async with s3_client(s3) as client:
        listed = await client.list_objects_v2(Bucket=s3.bucket)
    return [o["Key"] for o in listed["Contents"] if o["Key"] in keys and "-" not in o["ETag"]]


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
    # verified by SHA-256, single PUT and multipart alike: each copy carries projmig's mark
    assert await copy_marks(direct.destination.s3, sample.objects) == expected_marks(sample.objects)

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
    assert await copy_marks(direct.destination.s3, sample.objects) == expected_marks(sample.objects)

    again = await migrate_project(settings)
    assert again.status == "already-migrated" and again.objects_copied == 0


async def test_md5_etags_on_both_sides_are_what_proves_a_copy(faulty: Faulty) -> None:
    sample = await faulty.sample(files=2, directory_objects=0, multipart_size=0)
    report = await migrate_project(faulty.settings(sample.uuid))
    assert report.verification.startswith("verification: ETags (MD5s on both sides)"), report.verification
    assert "destination (MINIO): ETags are MD5s" in report.verification



async def test_the_source_probe_reads_one_object_without_listing_the_whole_project(faulty: Faulty) -> None:
    """The probe needs one small object of the source project, found on the listing's first page:
    a project of more than 1,000 objects is not listed to its end before every run."""
    sample = await faulty.sample(files=2, directory_objects=1001, directory_object_size=1024, multipart_size=0)
    settings = faulty.settings(sample.uuid)
    faulty.proxies.src_s3.reset_counts()

    report = await preflight(settings)

    assert f"object {sample.uuid}/" in report.verification.notes[-1], report.verification.notes
    listings = [parse_qs(urlsplit(r.target).query) for r in faulty.proxies.src_s3.requests
                if r.method == "GET" and "list-type" in urlsplit(r.target).query]
    of_project = [q for q in listings if q.get("prefix") == [f"{sample.uuid}/"]]
    assert len(of_project) == 1 and not any("continuation-token" in q for q in listings), listings


@pytest.mark.parametrize("data_client", ["lean", "botocore"])
async def test_objects_with_stored_checksums_are_verified_by_them(faulty: Faulty, data_client: str) -> None:
    """The source's ETags cannot be used (rewritten as SSE-KMS does); its objects have stored
    checksums, which the destination validates on receipt and keeps: no object is read back.
    Both data paths (botocore's: AWS) ask for and send the checksums."""
    sample = await faulty.sample(files=6, directory_objects=2, multipart_size=12 * MiB, multipart_part_size=5 * MiB)
    direct = faulty.direct(sample.uuid)
    singles = await single_part_keys(direct.source.s3, sample.objects)
    without = sorted(singles)[-1]  # one single-part object keeps no checksum: proven by SHA-256
    checksummed = await store_with_checksums(direct.source.s3, [k for k in singles if k != without])
    big = next(k for k in sample.objects if k not in singles)  # multipart: copied in parts, proven by SHA-256
    faulty.proxies.src_s3.rewrite_etags(like_sse_kms)
    settings = faulty.settings(sample.uuid, multipart_threshold=8 * MiB, s3_data_client=data_client)

    report = await migrate_project(settings)

    assert report.status == "migrated" and report.objects_copied == len(sample.objects)
    assert "the source's stored S3 checksums, validated by the destination" in report.verification, report.verification
    assert "S3 checksums validated and kept" in report.verification
    by_algorithm = {f"checksum {name}": sum(1 for n, _ in checksummed.values() if n == name) for name in ("CRC32", "SHA256")}
    assert report.verified_by == {**by_algorithm, "sha256": 2}, report.verified_by  # `without` and `big`
    assert (f"verified: {by_algorithm['checksum CRC32']} by checksum CRC32, {by_algorithm['checksum SHA256']} by "
            "checksum SHA256, 2 by sha256") in report.to_markdown()
    # the destination keeps the source's checksum; nothing proven by checksum was read back
    assert await stored_checksums(direct.destination.s3, checksummed) == checksummed
    # verified by checksum or by SHA-256: each copy carries projmig's mark
    assert await copy_marks(direct.destination.s3, sample.objects) == expected_marks(sample.objects)
    bucket = settings.destination.s3.bucket
    paths = [unquote(urlsplit(r.target).path) for r in faulty.proxies.dst_s3.requests if r.method == "GET"]
    read_back = {p.removeprefix(f"/{bucket}/") for p in paths if p.startswith(f"/{bucket}/")}  # not listings
    assert read_back == {without, big}, read_back
    assert await digests(direct.destination.s3, sample.objects) == await digests(direct.source.s3, sample.objects)
    assert await open_uploads(direct) == []

    again = await migrate_project(settings)
    assert again.status == "already-migrated" and again.objects_copied == 0


async def test_bytes_changed_on_the_way_are_refused_by_the_destination(faulty: Faulty) -> None:
    """The destination's proxy changes bytes of the PUT bodies going through it (the body is not
    signed): the destination refuses them against the source's stored checksum; nothing is written."""
    sample = await faulty.sample(files=3, directory_objects=0, soft_link=False, multipart_size=0, special_names=False)
    direct = faulty.direct(sample.uuid)
    key = max(await single_part_keys(direct.source.s3, sample.objects), key=lambda k: sample.objects[k])
    checksum = (await store_with_checksums(direct.source.s3, [key]))[key]
    async with s3_client(direct.source.s3) as client:
        body = await (await client.get_object(Bucket=direct.source.s3.bucket, Key=key))["Body"].read()
    piece = body[100:116]  # changed on the way to the destination
    faulty.proxies.src_s3.rewrite_etags(like_sse_kms)
    faulty.proxies.dst_s3.tamper(piece, bytes(b ^ 0xFF for b in piece))
    settings = faulty.settings(sample.uuid)

    with pytest.raises(CopyFailures) as failed:
        await migrate_project(settings)
    message = str(failed.value)
    assert f"{key}: the destination refused the bytes read from the source: they do not have the source's stored " \
           f"SHA256 checksum {checksum[1]} (BadDigest); nothing written" in message, message
    assert faulty.proxies.dst_s3.faults
    assert key not in await destination_keys(direct)
    assert (await row_counts(direct, [sample.uuid]))["projects"] == 0

    faulty.proxies.dst_s3.heal()
    faulty.proxies.src_s3.rewrite_etags(like_sse_kms)
    report = await migrate_project(settings)
    assert report.status == "migrated" and report.verified_by.get("checksum SHA256") == 1, report.verified_by
    assert await digests(direct.destination.s3, [key]) == {key: hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("faulty", [(SEAWEEDFS, CEPH)], indirect=True, ids=["seaweedfs-to-ceph"])
async def test_a_destination_that_ignores_checksums_is_seen_by_the_probe(faulty: Faulty) -> None:
    """Ceph 16.2 takes a part whatever its checksum says: the probe sees it, checksums are not used
    (each object proven by SHA-256 read back), and verification=checksum is refused."""
    sample = await faulty.sample(files=3, directory_objects=1, multipart_size=0)
    direct = faulty.direct(sample.uuid)
    await store_with_checksums(direct.source.s3, await single_part_keys(direct.source.s3, sample.objects))
    faulty.proxies.src_s3.rewrite_etags(like_sse_kms)

    with pytest.raises(PreflightError) as refused:
        await migrate_project(faulty.settings(sample.uuid, verification="checksum"))
    message = str(refused.value)
    assert "options.verification=checksum cannot work: destination bucket" in message, message
    assert "(provider CEPH): a part of probe upload" in message and "ignores S3's additional checksums" in message
    assert await destination_keys(direct) == {} and await open_uploads(direct) == []

    report = await migrate_project(faulty.settings(sample.uuid))
    assert report.status == "migrated"
    assert "verification: SHA-256 of the bytes read back" in report.verification, report.verification
    assert "destination (CEPH): ETags are MD5s, S3 checksums not validated" in report.verification
    assert report.verified_by == {"sha256": len(sample.objects)}, report.verified_by
    assert await digests(direct.destination.s3, sample.objects) == await digests(direct.source.s3, sample.objects)
    assert await copy_marks(direct.destination.s3, sample.objects) == expected_marks(sample.objects)  # Ceph keeps it
