"""Copy objects from the source bucket into the destination, resumably, and prove each copy whole.

- A multipart source is copied with its own part layout (``HeadObject PartNumber=1`` gives the
  part size), so the destination's ETag equals the source's and the next skip check works.
- A large single-part source is copied in parts; its MD5 is computed in order while streaming and
  must equal the source ETag; the object carries ``x-amz-meta-projmig-source-etag`` for later skips.
- An interrupted multipart upload is continued: the upload id is found again with
  ``ListMultipartUploads`` and its finished parts with ``ListParts`` (only an upload this migration
  started: :mod:`projmig.marks`). Part layouts, finding an upload again and sending its parts:
  :mod:`projmig.multipart`; this module creates, completes and verifies the uploads.
- Everything written carries the migration's mark (:mod:`projmig.marks`); an object that fails its
  ETag check is deleted again only while it still carries that mark.
- A failure that retrying cannot fix aborts the upload; a transient one (network, 5xx) keeps it
  for the rerun to continue. Either way the error names the object and the cause.
- Same endpoint and credentials on both sides: the server copies single-part objects, one
  ``CopyObject`` each, held to the planned ETag and bearing the mark (``REPLACE``), verified by the
  ETag it answers. Multipart objects are still streamed with the source's layout:
  SeaweedFS's ``UploadPartCopy`` answers with per-chunk ETags (``<md5>-2`` for a 6 MiB part), so
  its result could not be verified against the source's ETag.
- The bytes held in memory at once are bounded (:class:`projmig.budget.ByteBudget`, shared by the
  copiers of a run).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError

from .budget import ByteBudget
from .buckets import ObjectState, delete_if_marked, etag_of
from .errors import PreflightError, ProjmigError, TransferError, VerificationError
from .graph import SourceObject
from .marks import COPY_MARK, create_recorded_upload, drop_record, mark_of, without_marks
from .multipart import (
    PartTransfer,
    abort_quietly,
    check_unchanged,
    composite_etag,
    find_upload,
    is_multipart_etag,
    part_layout,
)
from .plan import ObjectCopy
from .units import human_bytes
from .limits import MiB
from .s3 import CHECKSUM_MISMATCH, Retrier, describe_error, error_code, is_transient, upload_gone
from .s3data import CHECKSUMS, BotoData, DataPath, digest

log = logging.getLogger("projmig.copier")

MARKER = "projmig-source-etag"
MAX_SINGLE_COPY = 5 * 1024 * MiB  # CopyObject's limit


@dataclass(frozen=True, slots=True)  # one per object: see graph.SourceObject
class CopyOutcome:
    src_key: str
    dst_key: str
    size: int
    etag: str  # the destination's
    action: Literal["copied", "server-side", "skipped"]
    bytes_sent: int = 0  # bytes uploaded by this run (resumed parts not counted)
    resumed_parts: int = 0
    # what proved it whole: "etag", "sha256" (read back), "checksum SHA256" (the source's stored
    # checksum, validated by the destination on receipt; CRC32C...); "" for skipped objects
    verified_by: str = ""


class CopyFailures(TransferError):
    """Some objects could not be copied; the others were."""

    def __init__(self, failures: list[Exception], outcomes: list[CopyOutcome]):
        self.failures = failures
        self.outcomes = outcomes
        first = "; ".join(str(f) for f in failures[:3])
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        super().__init__(
            f"{len(failures)} of {len(failures) + len(outcomes)} objects failed: {first}{more}",
            transient=all(getattr(f, "transient", False) for f in failures),
        )


def stored_checksum(answer: dict[str, Any]) -> tuple[str, str] | None:
    """(algorithm, value) of the full-object checksum an object's GET or HEAD answer carries (asked
    with ``ChecksumMode=ENABLED``); a multipart object's COMPOSITE one (``<value>-N``, a checksum of
    its parts' checksums) is not one."""
    if answer.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    for name in CHECKSUMS:
        value = answer.get(f"Checksum{name}")
        if value and "-" not in value:
            return name, value
    return None


def refuse_oversized(objects: list[SourceObject], max_size: int, bucket: str, shown: int = 10) -> None:
    """Raise :class:`PreflightError` naming each source object larger than the destination takes
    (S3: 5 TiB; less where the destination's ``max_object_size`` says so)."""
    large = [o for o in objects if o.size > max_size]
    if not large:
        return
    problems = [
        f"source object {o.key} is {human_bytes(o.size)} ({o.size} bytes): the destination bucket {bucket} takes "
        f"objects of at most {human_bytes(max_size)} (destination.s3.max_object_size)"
        for o in large[:shown]
    ]
    if len(large) > shown:
        problems.append(f"and {len(large) - shown} more source objects larger than {human_bytes(max_size)}")
    raise PreflightError(problems)


class ObjectCopier:
    def __init__(
        self,
        src: Any,
        dst: Any,
        src_bucket: str,
        dst_bucket: str,
        *,
        retry: Retrier,
        server_side: bool = False,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        concurrency: int = 16,
        part_concurrency: int = 8,
        memory_limit: int = 128 * MiB,
        on_bytes: Callable[[int], None] | None = None,
        src_data: DataPath | None = None,
        dst_data: DataPath | None = None,
        slots: asyncio.Semaphore | None = None,
        budget: ByteBudget | None = None,
        verification: Literal["etag", "checksum", "sha256"] = "etag",
    ):
        """``src``/``dst``: aiobotocore clients; ``src_data``/``dst_data``: what GETs and PUTs the
        bytes (:mod:`projmig.s3data`; default: the clients themselves). ``slots``/``budget``: limits
        shared with other copiers (default: this copier's own ``concurrency`` and ``memory_limit``).
        ``verification``: etag (the destination's ETag equals the source's, or the MD5s of what was
        sent) or sha256 (the object read back from the destination has the SHA-256 of the source
        bytes read; the preflight chooses it where a side's ETags are not MD5s) or checksum (as
        sha256, but an object sent in one PUT whose source has a stored full-object checksum
        carries it, and the destination, which validates and keeps such checksums, proves it)."""
        self.by_sha256 = verification != "etag"
        self.by_checksum = verification == "checksum"
        self.src, self.dst = src, dst
        self.src_data = src_data or BotoData(src)
        self.dst_data = dst_data or BotoData(dst)
        self.src_bucket, self.dst_bucket = src_bucket, dst_bucket
        self.retry = retry
        self.server_side = server_side
        self.threshold = multipart_threshold
        self.chunksize = multipart_chunksize
        self.slots = slots or asyncio.Semaphore(concurrency)
        self.concurrency = concurrency  # the slots' number (of the shared ones too)
        self.part_window = part_concurrency
        self.budget = budget or ByteBudget(memory_limit)
        self.on_bytes = on_bytes or (lambda n: None)

    async def copy_all(self, items: list[tuple[ObjectCopy, ObjectState | None]]) -> list[CopyOutcome]:
        """Copy each (object, its destination state); every object gets its chance before failing.
        At most ``concurrency`` workers take the objects in order, each copying one at a time in a
        slot: a batch of 1,000 objects is not 1,000 tasks queued on the slots (shared with other batches)."""
        results: list[CopyOutcome | Exception | None] = [None] * len(items)
        todo = iter(enumerate(items))

        async def worker() -> None:
            for i, (item, state) in todo:
                async with self.slots:
                    results[i] = await self._guarded(item, state)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(items)))))
        failures = [r for r in results if isinstance(r, Exception)]
        outcomes = [r for r in results if isinstance(r, CopyOutcome)]
        if failures:
            raise CopyFailures(failures, outcomes)
        return outcomes

    async def _guarded(self, item: ObjectCopy, state: ObjectState | None) -> CopyOutcome | Exception:
        try:
            return await self.copy(item, state)
        except ProjmigError as exc:
            return exc
        except Exception as exc:  # a bug or an unexpected reply: still name the object
            return TransferError(f"{item.dst_key}: {describe_error(exc)}", transient=is_transient(exc))

    async def copy(self, item: ObjectCopy, state: ObjectState | None = None) -> CopyOutcome:
        if state is not None and state.size == item.size and state.etag == item.etag:
            return CopyOutcome(src_key=item.src_key, dst_key=item.dst_key, size=item.size, etag=state.etag, action="skipped")
        try:
            if self.server_side and not self.by_sha256 and not is_multipart_etag(item.etag) and item.size <= MAX_SINGLE_COPY:
                return await self._server_side_copy(item)
            if item.size < self.threshold and not is_multipart_etag(item.etag):
                return await self._copy_whole(item)
            return await self._copy_in_parts(item)
        except ProjmigError:
            raise
        except ClientError as exc:
            raise _named(item, exc) from exc

    # -- single request -------------------------------------------------------------------------

    async def _copy_whole(self, item: ObjectCopy) -> CopyOutcome:
        async with self.budget.buffer(item.size) as data:
            resp, got = await self.retry(
                f"{item.src_key}: GET",
                lambda: self.src_data.get(self.src_bucket, item.src_key, data, checksums=self.by_checksum),
            )
            check_unchanged(item, etag_of(resp["ETag"]), got)
            headers = _carried_headers(resp, mark_of(item.src_key, item.dst_key))
            checksum = stored_checksum(resp) if self.by_checksum else None
            if checksum:
                headers[f"Checksum{checksum[0]}"] = checksum[1]
            if self.by_sha256:
                headers["Metadata"][MARKER] = item.etag
            put_resp = await self._put_whole(item, data, headers, checksum)
            by_checksum = checksum is not None and put_resp.get(f"Checksum{checksum[0]}") == checksum[1]
            read_sha256 = await digest("sha256", data) if self.by_sha256 and not by_checksum else b""
            sent_md5 = await digest("md5", data) if etag_of(put_resp["ETag"]) != item.etag else b""
        etag = etag_of(put_resp["ETag"])
        if by_checksum:
            assert checksum is not None
            verified_by = f"checksum {checksum[0]}"
        elif self.by_sha256:
            await self._check_read_back(item, read_sha256.hex())
            verified_by = "sha256"
        elif etag != item.etag:
            removed = await self._discard(item)
            if sent_md5.hex() == etag:  # it arrived as it was read: the source's ETag is no MD5 of its bytes
                raise VerificationError(
                    f"{item.dst_key}: the source's ETag {item.etag} is not the MD5 of its bytes (SSE-KMS or SSE-C?); "
                    f"{removed}: migrate with options.verification=sha256"
                )
            raise VerificationError(f"{item.dst_key}: destination ETag {etag} != source {item.etag}; {removed}")
        else:
            verified_by = "etag"
        self.on_bytes(item.size)
        return CopyOutcome(
            src_key=item.src_key, dst_key=item.dst_key, size=item.size, etag=etag, action="copied",
            bytes_sent=item.size, verified_by=verified_by,
        )

    async def _put_whole(
        self, item: ObjectCopy, data: memoryview, headers: dict[str, Any], checksum: tuple[str, str] | None
    ) -> dict[str, Any]:
        try:
            return await self.retry(
                f"{item.dst_key}: PUT", lambda: self.dst_data.put(self.dst_bucket, item.dst_key, data, **headers)
            )
        except ClientError as exc:
            if checksum is None or error_code(exc) not in CHECKSUM_MISMATCH:
                raise
            # the destination refused to store it: what was read is not what the source stored
            raise VerificationError(
                f"{item.dst_key}: the destination refused the bytes read from the source: they do not have the "
                f"source's stored {checksum[0]} checksum {checksum[1]} ({error_code(exc)}); nothing written, rerun to copy again"
            ) from exc

    async def _server_side_copy(self, item: ObjectCopy) -> CopyOutcome:
        """One request: CopyObject of the source if its ETag is still the planned one
        (``x-amz-copy-source-if-match``), ``MetadataDirective=REPLACE`` with this migration's mark as
        the copy's only metadata. What the plan's listing gave (size, ETag) is all it needs: the
        source's content headers and user metadata are not read (that took a HEAD per object), so
        the copy has none of them (S3's REPLACE resets them: docs/providers.md)."""
        mark = {"Metadata": {COPY_MARK: mark_of(item.src_key, item.dst_key)}}
        try:
            resp = await self.retry(
                f"{item.dst_key}: server-side copy",
                lambda: self.dst_data.copy(
                    self.src_bucket, item.src_key, self.dst_bucket, item.dst_key, if_match=f'"{item.etag}"', **mark
                ),
            )
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412"):  # the server held the copy to the ETag
                raise _changed(item, "its ETag is no longer the planned one") from exc
            if error_code(exc) == "NoSuchKey":  # (a missing destination bucket is NoSuchBucket)
                raise _changed(item, "it is gone") from exc
            raise
        etag = etag_of(resp["CopyObjectResult"]["ETag"])
        if etag != item.etag:
            # A server that ignores the condition (Ceph 16.2 without x-amz-copy-if-match) copied what
            # is there now; the source tells whether it changed (a HEAD, on this rare path only).
            removed = await self._discard(item)
            try:
                head = await self.retry(
                    f"{item.src_key}: HEAD", lambda: self.src.head_object(Bucket=self.src_bucket, Key=item.src_key)
                )
            except ClientError as exc:
                if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                    raise
                raise _changed(item, "it is gone", f"the server copied what was there: {removed}") from exc
            if etag_of(head["ETag"]) != item.etag or head["ContentLength"] != item.size:
                now = f"ETag {etag_of(head['ETag'])}, {head['ContentLength']} bytes"
                raise _changed(item, now, f"the server copied it anyway: {removed}")
            raise VerificationError(f"{item.dst_key}: destination ETag {etag} != source {item.etag}; {removed}")
        self.on_bytes(item.size)
        return CopyOutcome(
            src_key=item.src_key, dst_key=item.dst_key, size=item.size, etag=etag, action="server-side", verified_by="etag"
        )

    # -- multipart (the parts themselves: projmig.multipart) --------------------------------------

    async def _copy_in_parts(self, item: ObjectCopy, *, fresh: bool = False) -> CopyOutcome:
        sizes, same_layout = await part_layout(self.src, self.src_bucket, item, self.retry, self.chunksize)
        same_layout = same_layout and not self.by_sha256  # then the source's ETag proves nothing: read every part
        head = await self.retry(
            f"{item.src_key}: HEAD", lambda: self.src.head_object(Bucket=self.src_bucket, Key=item.src_key)
        )
        check_unchanged(item, etag_of(head["ETag"]), head["ContentLength"])
        mark = mark_of(item.src_key, item.dst_key)
        upload_id, done = None, {}
        if not fresh:
            upload_id, done, sizes = await find_upload(
                self.dst, self.dst_bucket, item.dst_key, sizes, mark, self.retry, adopt_layout=not same_layout
            )
        if upload_id is None:
            upload_id = await self._create_upload(item, head, mark, same_layout)
        try:
            parts, sent, whole = await PartTransfer(self, item, upload_id, sizes, done, same_layout).run()
            resp = await self.retry(
                f"{item.dst_key}: complete multipart upload",
                lambda: self.dst.complete_multipart_upload(
                    Bucket=self.dst_bucket, Key=item.dst_key, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e, _ in parts]},
                ),
            )
        except (ClientError, TransferError) as exc:
            if upload_gone(exc.__cause__ or exc) and not fresh:
                # someone (e.g. the storage service's GC) aborted our upload: start this object over
                log.warning("%s: upload %s vanished, starting over", item.dst_key, upload_id)
                return await self._copy_in_parts(item, fresh=True)
            if not (exc.transient if isinstance(exc, TransferError) else is_transient(exc)):
                await abort_quietly(self.dst, self.dst_bucket, item.dst_key, upload_id, self.retry)
                await self._forget_uploads(item.dst_key)
            raise
        await self._forget_uploads(item.dst_key)  # completed: no open upload of ours left for this key
        # Ceph's RADOS Gateway answers with an empty ETag: the object's own HEAD tells it
        etag = etag_of(resp.get("ETag") or "") or await self._etag_of_completed(item)
        expected = item.etag if same_layout else composite_etag([md5 for _, _, md5 in parts])
        if self.by_sha256:
            assert whole is not None
            await self._check_read_back(item, whole)
        elif etag != expected or (whole is not None and not is_multipart_etag(item.etag) and whole != item.etag):
            removed = await self._discard(item)
            raise VerificationError(
                f"{item.dst_key}: destination ETag {etag} != expected {expected} (source {item.etag}); {removed}"
            )
        return CopyOutcome(
            src_key=item.src_key, dst_key=item.dst_key, size=item.size, etag=etag,
            action="copied", bytes_sent=sent, verified_by="sha256" if self.by_sha256 else "etag",
            resumed_parts=sum(1 for n, e, _ in parts if done.get(n) == e),
        )

    async def _create_upload(self, item: ObjectCopy, head: dict[str, Any], mark: str, same_layout: bool) -> str:
        """A new multipart upload of ``item``, recorded as this migration's (:mod:`projmig.marks`)."""
        extra = _carried_headers(head, mark)
        if not same_layout:
            extra["Metadata"][MARKER] = item.etag
        return await create_recorded_upload(self.dst, self.dst_bucket, item.dst_key, mark, self.retry, **extra)

    async def _check_read_back(self, item: ObjectCopy, read_sha256: str) -> None:
        """The destination object, read back whole, has the SHA-256 of the source bytes read."""
        got = await self.retry(
            f"{item.dst_key}: read for SHA-256", lambda: self.dst_data.sha256(self.dst_bucket, item.dst_key)
        )
        if got != read_sha256:
            removed = await self._discard(item)
            raise VerificationError(
                f"{item.dst_key}: read back from the destination, SHA-256 {got} != {read_sha256} of the source bytes "
                f"read; {removed}"
            )

    async def _etag_of_completed(self, item: ObjectCopy) -> str:
        head = await self.retry(
            f"{item.dst_key}: HEAD", lambda: self.dst.head_object(Bucket=self.dst_bucket, Key=item.dst_key)
        )
        return etag_of(head["ETag"]) if head["ContentLength"] == item.size else ""

    async def _forget_uploads(self, key: str) -> None:
        try:
            await drop_record(self.dst, self.dst_bucket, key, self.retry)
        except Exception as exc:  # the run's end (or cleanup) drops it later
            log.warning("%s: could not drop the upload record: %s", key, describe_error(exc))

    async def _discard(self, item: ObjectCopy) -> str:
        """Delete a copy that failed its ETag check, if it is still ours; says what happened."""
        if await delete_if_marked(self.dst, self.dst_bucket, item.dst_key, mark_of(item.src_key, item.dst_key), self.retry):
            return "removed, rerun to copy again"
        return "not removed: it does not carry this migration's mark (written by someone else since)"


def _carried_headers(resp: dict[str, Any], mark: str) -> dict[str, Any]:
    """The source's headers and metadata that a copy keeps, with this migration's mark instead of
    any of projmig's own (the source may itself be a copy)."""
    headers: dict[str, Any] = {}
    for name in ("ContentType", "ContentEncoding", "ContentDisposition", "CacheControl"):
        if resp.get(name):
            headers[name] = resp[name]
    headers["Metadata"] = {**without_marks(resp.get("Metadata"), [MARKER]), COPY_MARK: mark}
    return headers


def _changed(item: ObjectCopy, now: str, copied: str = "") -> TransferError:
    """The source object is no longer the one planned (as :func:`projmig.multipart.check_unchanged` says it)."""
    return TransferError(
        f"{item.src_key}: source object changed since the plan ({now}; planned {item.etag}, {item.size} bytes): "
        f"rerun the migration" + (f" ({copied})" if copied else "")
    )


def _named(item: ObjectCopy, exc: ClientError) -> TransferError:
    return TransferError(f"{item.dst_key}: {describe_error(exc)}", transient=is_transient(exc))
