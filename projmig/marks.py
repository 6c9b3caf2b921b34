"""Tell what projmig wrote into a destination bucket from what anyone else wrote there.

**Objects.** Every object projmig writes carries the user metadata ``x-amz-meta-projmig-copy:
source=<source project uuid>;copy=<destination project uuid>`` (a PUT sends it, a server-side copy
replaces the source's metadata with it, a multipart upload is created with it, so the completed
object has it). An object is *this migration's* when it carries the mark of this migration's
source and destination project. Deleting after a failed ETag check, and rollback once the rows are
gone, remove only such objects; an object a destination user wrote over (osparc's storage writes a
new object without the mark) is left alone.

**Unfinished multipart uploads.** S3 shows no metadata of an upload before it is completed
(``ListMultipartUploads`` and ``ListParts`` give its key, id, start time and initiator), so the
mark of an upload is kept in a small *ledger object* per key, ``<copy>/.projmig-uploads/<sha256 of
the key>``, carrying the mark and listing the upload ids this migration started for the key. An
open upload is this migration's only when the ledger object of its key carries this migration's
mark **and lists its id**: nothing else (not its start time, not its initiator, which a destination
user of the same credentials shares) makes an upload projmig's. Only such uploads are continued,
aborted after a failure, aborted by ``projmig cleanup`` or by rollback. The ledger object goes once
the key has no open upload of projmig left.

:func:`create_recorded_upload` writes the id down right after ``CreateMultipartUpload`` answers,
before any part is sent, and aborts the upload when that write fails. Two windows remain where an
upload of ours exists unrecorded: the process dies between the answer and the ledger write, or the
answer to a create is lost and the retried create starts a second upload. Such an upload holds no
part and is never touched by projmig (it cannot prove it is its own); it is left to whatever cleans
the bucket's abandoned uploads: a lifecycle rule ``AbortIncompleteMultipartUpload`` on the bucket
(AWS, Ceph), or osparc's storage service, which aborts the uploads it does not know. (A ledger
object written by an older projmig with ``"pending": true`` claimed every upload of its key started
after it, a destination user's too; that field is now ignored.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from .s3 import Retrier, describe_error, error_code

log = logging.getLogger("projmig.marks")

COPY_MARK = "projmig-copy"  # user metadata name (x-amz-meta-projmig-copy)
LEDGER_DIR = ".projmig-uploads"


def copy_mark(source_project: str, copy_project: str) -> str:
    """The mark of everything one migration writes for one project."""
    return f"source={source_project.lower()};copy={copy_project.lower()}"


def project_of(key: str) -> str:
    """The project a key belongs to: its first path element (``{project}/{node}/...``)."""
    return key.split("/", 1)[0]


def mark_of(src_key: str, dst_key: str) -> str:
    """The mark of the copy of ``src_key`` at ``dst_key``."""
    return copy_mark(project_of(src_key), project_of(dst_key))


def ledger_prefix(project: str) -> str:
    return f"{project}/{LEDGER_DIR}/"


def ledger_key(dst_key: str) -> str:
    return ledger_prefix(project_of(dst_key)) + hashlib.sha256(dst_key.encode()).hexdigest()[:40]


def is_ledger_key(key: str) -> bool:
    return f"/{LEDGER_DIR}/" in key


def marked(metadata: dict[str, str] | None, mark: str) -> bool:
    return (metadata or {}).get(COPY_MARK) == mark


def without_marks(metadata: dict[str, str] | None, names: Iterable[str] = ()) -> dict[str, str]:
    """A source object's metadata to carry over: without projmig's own (the source may be a copy)."""
    drop = {COPY_MARK, *names}
    return {k: v for k, v in (metadata or {}).items() if k not in drop}


async def read_mark(client: Any, bucket: str, key: str, retry: Retrier) -> str | None:
    """The mark an object carries (None: unmarked, or no such object)."""
    try:
        head = await retry(f"HEAD {key}", lambda: client.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return (head.get("Metadata") or {}).get(COPY_MARK)


@dataclass
class UploadRecord:
    """A ledger object: the uploads of one key that this migration started."""

    mark: str | None
    uploads: set[str] = field(default_factory=set)

    def owns(self, upload: dict[str, Any], mark: str) -> bool:
        return self.mark == mark and upload["UploadId"] in self.uploads


async def read_record(client: Any, bucket: str, dst_key: str, retry: Retrier) -> UploadRecord | None:
    key = ledger_key(dst_key)

    async def get() -> tuple[dict[str, Any], bytes]:
        resp = await client.get_object(Bucket=bucket, Key=key)
        async with resp["Body"] as body:
            return resp, await body.read()

    try:
        resp, body = await retry(f"{dst_key}: read upload record", get)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    try:
        uploads = {str(u) for u in json.loads(body).get("uploads", [])}
    except (ValueError, AttributeError, TypeError):  # not a record of ours
        return UploadRecord(mark=None)
    return UploadRecord(mark=(resp.get("Metadata") or {}).get(COPY_MARK), uploads=uploads)


async def write_record(
    client: Any, bucket: str, dst_key: str, mark: str, retry: Retrier, *, uploads: set[str]
) -> None:
    key = ledger_key(dst_key)
    body = json.dumps({"key": dst_key, "uploads": sorted(uploads)}).encode()
    await retry(
        f"{dst_key}: record upload",
        lambda: client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={COPY_MARK: mark}),
    )


async def create_recorded_upload(
    client: Any, bucket: str, dst_key: str, mark: str, retry: Retrier, **create: Any
) -> str:
    """A new multipart upload of ``dst_key`` (``create``: CreateMultipartUpload's other arguments),
    its id in the key's ledger object before the caller sends a part. If the id cannot be written
    down, the upload is aborted here: an upload nobody can prove to be projmig's must not stay."""
    created = await retry(
        f"{dst_key}: create multipart upload",
        lambda: client.create_multipart_upload(Bucket=bucket, Key=dst_key, **create),
    )
    upload_id: str = created["UploadId"]
    try:
        await write_record(client, bucket, dst_key, mark, retry, uploads={upload_id})
    except BaseException:
        try:  # shielded: a cancelled run still takes its unrecorded upload with it
            await asyncio.shield(retry(f"{dst_key}: abort unrecorded upload", lambda: client.abort_multipart_upload(
                Bucket=bucket, Key=dst_key, UploadId=upload_id)))
        except Exception as exc:
            log.warning("%s: could not abort unrecorded upload: %s", dst_key, describe_error(exc))
        raise
    return upload_id


async def drop_record(client: Any, bucket: str, dst_key: str, retry: Retrier) -> None:
    key = ledger_key(dst_key)
    await retry(f"{dst_key}: drop upload record", lambda: client.delete_object(Bucket=bucket, Key=key))
