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
the key>``, carrying the mark and listing the upload ids this migration started for the key. It is
written just before an upload is created (``pending``) and again with the new id once it is; an
upload started after a pending record (same server clock) by a run stopped in between counts as
listed. An open upload is this migration's when the ledger object of its key carries this
migration's mark and lists it; only such uploads are continued, aborted after a failure, aborted by
``projmig cleanup`` or by rollback. The ledger object goes once the key has no open upload of
projmig left.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from .s3 import Retrier, error_code

COPY_MARK = "projmig-copy"  # user metadata name (x-amz-meta-projmig-copy)
LEDGER_DIR = ".projmig-uploads"
CLOCK_STEP = timedelta(seconds=1)  # Last-Modified has whole seconds


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
    pending_since: datetime | None = None  # an upload was being created (its id not written yet) as of then

    def owns(self, upload: dict[str, Any], mark: str) -> bool:
        if self.mark != mark:
            return False
        if upload["UploadId"] in self.uploads:
            return True
        # created after the record said so, by a run stopped before it wrote the id down
        initiated = upload.get("Initiated")
        return self.pending_since is not None and initiated is not None and initiated >= self.pending_since - CLOCK_STEP


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
        content = json.loads(body)
        uploads, pending = set(content.get("uploads", [])), bool(content.get("pending"))
    except (ValueError, AttributeError):  # not a record of ours
        return UploadRecord(mark=None)
    return UploadRecord(
        mark=(resp.get("Metadata") or {}).get(COPY_MARK), uploads=uploads,
        pending_since=resp.get("LastModified") if pending else None,
    )


async def write_record(
    client: Any, bucket: str, dst_key: str, mark: str, retry: Retrier, *, uploads: set[str], pending: bool
) -> None:
    """``pending``: before an upload is created; then again with its id once it is."""
    key = ledger_key(dst_key)
    body = json.dumps({"key": dst_key, "uploads": sorted(uploads), "pending": pending}).encode()
    await retry(
        f"{dst_key}: record upload",
        lambda: client.put_object(Bucket=bucket, Key=key, Body=body, Metadata={COPY_MARK: mark}),
    )


async def drop_record(client: Any, bucket: str, dst_key: str, retry: Retrier) -> None:
    key = ledger_key(dst_key)
    await retry(f"{dst_key}: drop upload record", lambda: client.delete_object(Bucket=bucket, Key=key))
