"""The preflight's S3 probes: whether a bucket can be read and written (a multipart upload with
small parts, aborted at once: no object appears), and what proves an object arrived whole on these
two providers (whether their ETags are MD5s, whether the destination validates and keeps S3
checksums). Reads and writes nothing else; the preflight (:mod:`projmig.preflight`) calls them."""

from __future__ import annotations

import base64
import hashlib
from contextlib import aclosing
from typing import Any, Literal, NamedTuple

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from .buckets import abort_upload, abort_uploads, etag_of, listing_pages
from .copier import stored_checksum
from .marks import COPY_MARK
from aiobotocore.session import AioSession

from .s3 import CHECKSUM_MISMATCH, Retrier, error_code, explain_bucket_error, s3_client
from .s3data import DataPath
from .settings import MigrationSettings, S3Settings

PROBE_KEY = ".projmig-preflight"
PROBE_MARK = "preflight probe"  # the write probe's upload carries projmig's mark like everything it writes


METHODS = {
    "etag": "ETags (MD5s on both sides)",
    "checksum": "the source's stored S3 checksums, validated by the destination on receipt (objects without one, "
    "and objects copied in parts: SHA-256 of the bytes read back)",
    "sha256": "SHA-256 of the bytes read back",
}


class VerificationProbe(BaseModel):
    """What each side's probe saw (None: not probed), and the method chosen."""

    source_md5_etags: bool | None = None
    destination_md5_etags: bool | None = None
    destination_checksums: bool | None = None  # refuses a wrong checksum of each algorithm, keeps a right one
    method: Literal["etag", "checksum", "sha256"] = "etag"
    notes: list[str] = Field(default_factory=list)  # what each probe saw, in words

    def describe(self) -> str:
        return f"verification: {METHODS[self.method]}" + (f" ({'; '.join(self.notes)})" if self.notes else "")


def probe_key(roots: list[str]) -> str:
    """The destination key of the write probe: an upload opened and aborted at once (ours)."""
    return f"{roots[0]}/{PROBE_KEY}" if roots else PROBE_KEY


PROBE_BODY = b"projmig preflight: are this server's ETags MD5s of the bytes?\n"
SMALL_PROBE = 16 * 1024 * 1024  # the largest source object read whole to see what its ETag is


async def probe_verification(
    settings: MigrationSettings, roots: list[str], retry: Retrier, problems: list[str], session: AioSession | None = None,
    source_data: DataPath | None = None,
) -> VerificationProbe:
    """Whether each side's ETags are the MD5 of the bytes (SSE-KMS and SSE-C objects on AWS have
    other ETags): in the first project, the smallest single-part object of the first listing page
    that has one is read whole; in the destination, the write probe's upload takes one small part (no object appears), after parts
    with a wrong checksum of each of S3's algorithms (refused: the destination validates them).
    etag where both sides' ETags are MD5s, else checksum where the destination validates and keeps
    checksums, else sha256. A chosen method that cannot work is a problem naming the provider and
    the object (under etag, copying would find every object differing from its source, and delete it
    again). ``source_data``: the run's data path of the source, which lists it (a page of 1,000 keys
    parsed by botocore costs ~0.1 s of CPU)."""
    probe = VerificationProbe()
    src, dst = settings.source.s3, settings.destination.s3
    written = await check_bucket("destination", dst, retry, listing=False, write_probe_key=probe_key(roots), session=session)
    if written.problems:
        problems += written.problems
        return probe
    probe.destination_md5_etags = written.md5_etag
    probe.destination_checksums = written.checksums
    probe.notes.append(f"destination ({dst.provider}): ETags {'are' if written.md5_etag else 'are not'} MD5s, "
                       f"S3 checksums {'validated and kept' if written.checksums else 'not validated'}")
    destination_what = f"destination bucket {dst.describe()} (provider {dst.provider}): a part of probe upload {probe_key(roots)}"
    source_what = ""
    async with s3_client(src, session=session) as client:
        key = await _small_single_part_object(client, src.bucket, f"{roots[0]}/", retry, source_data) if roots else None
        if key is not None:

            async def read() -> tuple[dict[str, Any], bytes]:
                resp = await client.get_object(Bucket=src.bucket, Key=key, ChecksumMode="ENABLED")
                async with resp["Body"] as body:
                    return resp, await body.read()

            resp, data = await retry(f"source bucket {src.describe()}: read {key}", read)
            probe.source_md5_etags = hashlib.md5(data).hexdigest() == etag_of(resp["ETag"])
            stored = stored_checksum(resp)
            probe.notes.append(
                f"source ({src.provider}) object {key}: ETag {'is' if probe.source_md5_etags else 'is not'} its MD5, "
                + (f"stored {stored[0]} checksum" if stored else "no stored checksum")
            )
            source_what = f"source bucket {src.describe()} (provider {src.provider}): object {key}"
    md5s = probe.source_md5_etags is not False and probe.destination_md5_etags
    probe.method = "etag" if md5s else "checksum" if probe.destination_checksums else "sha256"
    wanted = settings.options.verification
    if wanted == "etag" and not md5s:
        where = destination_what if not probe.destination_md5_etags else source_what
        problems.append(
            f"options.verification=etag cannot work: {where}: its ETag is not the MD5 of its bytes (SSE-KMS or "
            "SSE-C?): use verification auto, checksum or sha256"
        )
    elif wanted == "checksum" and not probe.destination_checksums:
        problems.append(
            f"options.verification=checksum cannot work: {destination_what}: a part with a wrong S3 checksum was "
            "taken, or a right one not kept (the server ignores S3's additional checksums, e.g. Ceph 16.2): use "
            "verification auto or sha256"
        )
    elif wanted in ("checksum", "sha256"):
        probe.method = wanted
    return probe



async def _small_single_part_object(
    client: Any, bucket: str, prefix: str, retry: Retrier, data: DataPath | None = None,
) -> str | None:
    """The smallest single-part object of the first listing page that has one. One object is all the
    probe reads: listing a project of 10,000 objects to the end cost ~2 s of every preflight."""
    async with aclosing(listing_pages(client, bucket, prefix, retry, data=data)) as pages:
        async for items in pages:
            small = sorted((size, key) for key, size, etag in items if 0 < size <= SMALL_PROBE and "-" not in etag)
            if small:
                return small[0][1]
    return None


class BucketCheck(NamedTuple):
    problems: list[str]
    md5_etag: bool | None = None  # the write probe's part came back with the MD5 of its bytes as ETag
    checksums: bool | None = None  # the server refused wrong S3 checksums and kept a right one


async def check_bucket(
    role: str, s3: S3Settings, retry: Retrier, *, listing: bool, write_probe_key: str | None, session: AioSession | None = None,
) -> BucketCheck:
    """Whether the bucket can be read (``listing``) and written: the write probe opens a multipart
    upload at ``write_probe_key``, uploads small parts (:func:`_probe_checksums`; then one whose
    ETag tells whether the server's ETags are MD5s) and aborts the upload, so no object ever appears."""
    where = f"{role} bucket {s3.describe()}"
    md5_etag = checksums = None
    try:
        async with s3_client(s3, session=session, connect_timeout=5) as client:
            if listing:
                await retry(f"{where}: head", lambda: client.head_bucket(Bucket=s3.bucket))
                await retry(f"{where}: list", lambda: client.list_objects_v2(Bucket=s3.bucket, MaxKeys=1))
            if write_probe_key:
                # a run killed before its abort below left its probe open: abort it first
                await abort_uploads(client, s3.bucket, write_probe_key, retry, keys={write_probe_key})
                upload = await retry(
                    f"{where}: write",
                    lambda: client.create_multipart_upload(
                        Bucket=s3.bucket, Key=write_probe_key, Metadata={COPY_MARK: PROBE_MARK}
                    ),
                )
                try:
                    validated = await _refuses_wrong_checksums(client, s3.bucket, write_probe_key, upload["UploadId"], retry, where)
                    right = {"ChecksumSHA256": base64.b64encode(hashlib.sha256(PROBE_BODY).digest()).decode()} if validated else {}
                    part = await retry(
                        f"{where}: write a part",
                        lambda: client.upload_part(
                            Bucket=s3.bucket, Key=write_probe_key, UploadId=upload["UploadId"], PartNumber=1,
                            Body=PROBE_BODY, **right,
                        ),
                    )
                    md5_etag = etag_of(part["ETag"]) == hashlib.md5(PROBE_BODY).hexdigest()
                    checksums = validated and part.get("ChecksumSHA256") == right["ChecksumSHA256"]
                finally:
                    await abort_upload(client, s3.bucket, write_probe_key, upload["UploadId"], retry)
    except Exception as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        action = "cannot write" if write_probe_key else "cannot read"
        return BucketCheck([f"{where}: {action}: {explain_bucket_error(cause)}"])
    return BucketCheck([], md5_etag, checksums)


CHECKSUM_BYTES = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}  # each algorithm's value


async def _refuses_wrong_checksums(client: Any, bucket: str, key: str, upload_id: str, retry: Retrier, where: str) -> bool:
    """Whether the server refuses a part whose S3 checksum is wrong, for each of S3's algorithms
    (a source object may carry any of them). A part taken (Ceph 16.2 ignores checksums) or refused
    for another reason (an algorithm the server does not know) ends the probe: checksums are not used."""
    for name, size in CHECKSUM_BYTES.items():
        wrong = base64.b64encode(bytes(size)).decode()  # the checksum of no bytes (CRC), or none at all
        try:
            await retry(
                f"{where}: write a part with a wrong {name} checksum",
                lambda: client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=PROBE_BODY, **{f"Checksum{name}": wrong}
                ),
            )
        except ClientError as exc:
            if error_code(exc) in CHECKSUM_MISMATCH:
                continue
            return False
        return False
    return True
