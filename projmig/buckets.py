"""What projmig does to a bucket besides copying into it: list, abort uploads, delete objects.

- A prefix is listed 1,000 keys per call (through a lean data path where given: :mod:`projmig.s3data`),
  open multipart uploads likewise; what is already in the destination is decided from such a listing.
- Every multipart upload projmig aborts goes through :func:`abort_upload` (an upload completed or
  aborted by someone else meanwhile is not an error) and every object it deletes through
  :func:`delete_objects` (batched ``DeleteObjects``, 1,000 keys a request; keys the server reports
  transient errors for are tried again). The callers keep their own conditions: which uploads are
  the migration's (:func:`abort_marked_uploads`, :mod:`projmig.marks`), how old they must be, which
  locks are held (:mod:`projmig.steps`).
- Only what carries a migration's mark is aborted or deleted on its behalf: an unfinished upload of
  a key its ledger object lists (:func:`abort_marked_uploads`), an object that fails its ETag check
  while it still carries the mark (:func:`delete_if_marked`), a rollback's objects
  (:mod:`projmig.rollback` chooses them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from .errors import TransferError
from .marks import drop_record, ledger_key, ledger_prefix, project_of, read_mark, read_record
from .s3 import Retrier, describe_error, is_transient, upload_gone
from .s3data import BotoData, DataPath, Listed

DELETE_BATCH = 1000  # keys per DeleteObjects request (the S3 maximum)


@dataclass(frozen=True, slots=True)
class ObjectState:
    size: int
    etag: str


def etag_of(value: str) -> str:
    return value.strip('"')


async def listing_pages(
    client: Any, bucket: str, prefix: str, retry: Retrier, *, data: DataPath | None = None
) -> AsyncIterator[list[Listed]]:
    """The objects under ``prefix``, one page (up to 1,000) at a time, through ``data``'s listing if
    given (the lean path's: :mod:`projmig.s3data`), else ``client``'s: a caller may stop early."""
    pages = data or BotoData(client)
    token: str | None = None
    while True:
        items, token = await retry(
            f"list s3://{bucket}/{prefix}", lambda: pages.list_page(bucket, prefix, token)
        )
        yield items
        if token is None:
            return


async def list_prefix(
    client: Any, bucket: str, prefix: str, retry: Retrier, *, data: DataPath | None = None
) -> dict[str, ObjectState]:
    """Every object under ``prefix`` (:func:`listing_pages` to the end)."""
    found: dict[str, ObjectState] = {}
    async for items in listing_pages(client, bucket, prefix, retry, data=data):
        for key, size, etag in items:
            found[key] = ObjectState(size=size, etag=etag)
    return found


async def list_uploads(client: Any, bucket: str, prefix: str, retry: Retrier) -> list[dict[str, Any]]:
    """Open multipart uploads under ``prefix``: ``{"Key", "UploadId", "Initiated"}``."""
    uploads: list[dict[str, Any]] = []
    markers: dict[str, str] = {}
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, **markers}
        page = await retry(f"list uploads s3://{bucket}/{prefix}", lambda: client.list_multipart_uploads(**kwargs))
        uploads += page.get("Uploads", [])
        if not page.get("IsTruncated"):
            return uploads
        markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


async def abort_upload(client: Any, bucket: str, key: str, upload_id: str, retry: Retrier) -> bool:
    """Abort one multipart upload: True, or False when it was gone already (completed or aborted
    meanwhile). An error retrying cannot fix is a :class:`TransferError` naming the key."""
    try:
        await retry(
            f"abort upload of {key}",
            lambda: client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
        )
    except ClientError as exc:
        if upload_gone(exc):
            return False
        raise TransferError(f"abort upload of {key}: {describe_error(exc)}") from exc
    return True


async def abort_uploads(
    client: Any, bucket: str, prefix: str, retry: Retrier, *, keys: set[str] | None = None,
    older_than: datetime | None = None,
) -> list[str]:
    """Abort open uploads under ``prefix`` (only for ``keys`` / older than a time, when given)."""
    aborted = []
    for upload in await list_uploads(client, bucket, prefix, retry):
        if keys is not None and upload["Key"] not in keys:
            continue
        if _started_after(upload, older_than):
            continue
        if await abort_upload(client, bucket, upload["Key"], upload["UploadId"], retry):
            aborted.append(upload["Key"])
    return aborted


async def abort_marked_uploads(
    client: Any, bucket: str, marks: dict[str, str], retry: Retrier, *, older_than: datetime | None = None,
) -> list[str]:
    """Abort the open uploads of the keys in ``marks`` (destination key -> this migration's mark)
    that are this migration's (:mod:`projmig.marks`), started before ``older_than`` when given, and
    drop the ledger objects of the keys left without an open upload. Returns the aborted uploads' keys."""
    aborted: list[str] = []
    by_project: dict[str, dict[str, str]] = {}
    for key, mark in marks.items():
        by_project.setdefault(project_of(key), {})[key] = mark
    for project, wanted in sorted(by_project.items()):
        recorded = await list_prefix(client, bucket, ledger_prefix(project), retry)
        keys = {k: m for k, m in wanted.items() if ledger_key(k) in recorded}
        if not keys:
            continue
        open_uploads: dict[str, list[dict[str, Any]]] = {}
        for upload in await list_uploads(client, bucket, f"{project}/", retry):
            open_uploads.setdefault(upload["Key"], []).append(upload)
        for key, mark in sorted(keys.items()):
            record = await read_record(client, bucket, key, retry)
            if record is None or record.mark != mark:
                continue
            kept = False
            for upload in open_uploads.get(key, []):
                if not record.owns(upload, mark):
                    continue
                if _started_after(upload, older_than):
                    kept = True
                    continue
                await abort_upload(client, bucket, key, upload["UploadId"], retry)  # gone meanwhile: as good
                aborted.append(key)
            if not kept:
                await drop_record(client, bucket, key, retry)
    return aborted


def _started_after(upload: dict[str, Any], when: datetime | None) -> bool:
    initiated = upload.get("Initiated")
    return when is not None and initiated is not None and initiated > when


async def delete_objects(client: Any, bucket: str, keys: list[str], retry: Retrier) -> int:
    """Delete ``keys`` with batched DeleteObjects; keys a server reports transient errors for are retried."""
    deleted = 0
    for start in range(0, len(keys), DELETE_BATCH):
        pending = set(keys[start:start + DELETE_BATCH])
        what = f"s3://{bucket}/{keys[start]}" if len(pending) == 1 else f"{len(pending)} objects from s3://{bucket}"
        where = f"delete {what}"

        async def attempt() -> None:
            batch = sorted(pending)
            resp = await client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            errors = {e["Key"]: e for e in resp.get("Errors", [])}
            pending.intersection_update(errors)
            if not errors:
                return
            first = next(iter(errors.values()))
            failure = ClientError({"Error": {"Code": first.get("Code", ""), "Message": first.get("Message", "")}},
                                  "DeleteObjects")
            if is_transient(failure):
                raise failure  # the Retrier tries the keys that failed again
            raise TransferError(f"{where}: {first['Key']}: {describe_error(failure)} ({len(errors)} keys failed)")

        try:
            await retry(where, attempt)
        except ClientError as exc:  # not worth retrying (e.g. access denied)
            raise TransferError(f"{where}: {describe_error(exc)}") from exc
        deleted += len(keys[start:start + DELETE_BATCH])
    return deleted


async def delete_if_marked(client: Any, bucket: str, key: str, mark: str, retry: Retrier) -> bool:
    """Delete ``key`` only if it carries ``mark``; whether it did."""
    if await read_mark(client, bucket, key, retry) != mark:
        return False
    await delete_objects(client, bucket, [key], retry)
    return True
