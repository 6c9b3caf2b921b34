"""Multipart uploads, part by part: the part layout to copy an object in (the source's own, a guess
from its ETag, or one of our own within S3's limits), an earlier run's upload of a key found again with
its finished parts, and the parts still missing sent (:class:`PartTransfer`). The copier
(:mod:`projmig.copier`) creates, completes and verifies the uploads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from botocore.exceptions import ClientError

from .budget import ByteBudget
from .buckets import abort_upload, etag_of, list_uploads
from .errors import PreflightError, TransferError
from .marks import UploadRecord, read_record
from .plan import ObjectCopy
from .s3 import Retrier, describe_error, upload_gone
from .s3data import DataPath, digest
from .limits import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, MiB

log = logging.getLogger("projmig.multipart")


def is_multipart_etag(etag: str) -> bool:
    return "-" in etag


def composite_etag(part_md5s: list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def own_part_sizes(size: int, chunksize: int) -> list[int]:
    """Part sizes for an object of ``size`` bytes: ``chunksize`` (within 5 MiB..5 GiB), grown to a
    whole number of MiB when the object would otherwise need more than 10,000 parts."""
    chunk = max(chunksize, MIN_PART_SIZE)
    needed = -(-size // MAX_PARTS)
    if needed > chunk:
        chunk = -(-needed // MiB) * MiB
    if chunk > MAX_PART_SIZE:
        raise PreflightError(f"an object of {size} bytes does not fit in {MAX_PARTS} parts of at most 5 GiB")
    return _sizes(chunk, size)


async def part_layout(src: Any, bucket: str, item: ObjectCopy, retry: Retrier, chunksize: int) -> tuple[list[int], bool]:
    """Part sizes, and whether they are the source's own (then the ETags will match).

    The source tells its layout on ``HeadObject PartNumber=1`` (the first part's size and
    ``PartsCount``). Ceph's RADOS Gateway ignores ``PartNumber`` (it answers for the whole
    object): then the part size is guessed from the ETag's part count (the smallest whole MiB,
    at least 5, that gives that many parts, as common clients choose), else ``chunksize``
    (``multipart_chunksize``). A guess is copied as a layout of our own (each part checked against
    the MD5 of what was read, the object marked with the source ETag); where it was right, the ETags
    match anyway.
    """
    if is_multipart_etag(item.etag):
        count = int(item.etag.rsplit("-", 1)[1])
        head = await retry(
            f"{item.src_key}: HEAD part 1", lambda: src.head_object(Bucket=bucket, Key=item.src_key, PartNumber=1)
        )
        first = head.get("ContentLength", 0)
        if head.get("PartsCount") == count and _fits(first, count, item.size) and _within_limits(first, count):
            return _sizes(first, item.size), True
        guess = max(MIN_PART_SIZE, -(-item.size // count // MiB) * MiB)
        if _fits(guess, count, item.size) and _within_limits(guess, count):
            log.info("%s: source part layout not told, guessing %d-byte parts", item.src_key, guess)
            return _sizes(guess, item.size), False
        log.info("%s: source part layout unknown or outside S3's limits, copying in parts of our own", item.src_key)
    return own_part_sizes(item.size, chunksize), False


async def find_upload(
    dst: Any, bucket: str, key: str, sizes: list[int], mark: str, retry: Retrier, *, adopt_layout: bool
) -> tuple[str | None, dict[int, str], list[int]]:
    """An earlier run's upload of ``key`` (the one with most usable parts; the others are
    aborted), its finished parts that have the expected size, and the part sizes to go on with.
    ``adopt_layout``: ``sizes`` is a layout of our own, and an upload whose parts show another
    one (an earlier run with another ``multipart_chunksize``) is continued in its own. Uploads
    this migration did not start are left alone."""
    listed = [u for u in await list_uploads(dst, bucket, key, retry) if u["Key"] == key]
    if not listed:
        return None, {}, sizes
    record = await read_record(dst, bucket, key, retry) or UploadRecord(mark=None)
    uploads = [u for u in listed if record.owns(u, mark)]
    if len(uploads) < len(listed):
        log.warning("%s: %d open uploads not started by this migration: left alone", key, len(listed) - len(uploads))
    candidates = []
    for upload in uploads:
        try:
            parts = await list_parts(dst, bucket, key, upload["UploadId"], retry)
        except ClientError as exc:
            if upload_gone(exc):  # aborted or completed since it was listed
                continue
            raise
        layout = (_layout_of(parts, sum(sizes)) if adopt_layout else None) or sizes
        usable = {n: etag for n, (size, etag) in parts.items() if 1 <= n <= len(layout) and size == layout[n - 1]}
        initiated = upload.get("Initiated") or datetime.min.replace(tzinfo=timezone.utc)
        candidates.append((len(usable), initiated, upload["UploadId"], usable, layout))
    if not candidates:
        return None, {}, sizes
    candidates.sort(key=lambda c: (c[0], c[1]))
    *stale, (count, _, upload_id, done, layout) = candidates
    for _, _, other, _, _ in stale:
        await abort_quietly(dst, bucket, key, other, retry)
    log.info("%s: resuming upload with %d of %d parts done", key, count, len(layout))
    return upload_id, done, layout


async def list_parts(dst: Any, bucket: str, key: str, upload_id: str, retry: Retrier) -> dict[int, tuple[int, str]]:
    """Part number -> (size, ETag) of every part the upload holds."""
    parts: dict[int, tuple[int, str]] = {}
    marker = 0
    while True:
        page = await retry(
            f"{key}: list parts",
            lambda: dst.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker),
        )
        for part in page.get("Parts", []):
            parts[part["PartNumber"]] = (part["Size"], etag_of(part["ETag"]))
        if not page.get("IsTruncated"):
            return parts
        marker = int(page["NextPartNumberMarker"])


async def abort_quietly(dst: Any, bucket: str, key: str, upload_id: str, retry: Retrier) -> None:
    """Abort an upload of ours; a failure is logged, not raised (the cleanup command can finish it)."""
    try:
        await abort_upload(dst, bucket, key, upload_id, retry)
    except Exception as exc:
        log.warning("%s: could not abort upload %s: %s", key, upload_id, describe_error(exc))


class PartCopier(Protocol):
    """What a :class:`PartTransfer` takes from its copier (:class:`projmig.copier.ObjectCopier`)."""

    src_data: DataPath
    dst_data: DataPath
    src_bucket: str
    dst_bucket: str
    retry: Retrier
    budget: ByteBudget
    part_window: int  # parts in flight at once
    by_sha256: bool  # the whole object's SHA-256, not its MD5, is computed
    on_bytes: Callable[[int], None]


class PartTransfer:
    """The parts of one multipart upload still to send: each read from the source (a ranged GET)
    and uploaded into the upload, ``part_window`` parts at once; a part an earlier run finished is
    kept when it is the one planned.

    A part's bytes are held in memory (counted in the byte budget) from its GET until its PUT is
    answered. With a layout of our own, every part is read (finished ones too) so that the
    whole-object MD5 (SHA-256 with ``verification=sha256``) can be compared with a single-part
    source's ETag: then a part's bytes are held until all earlier parts are hashed. Parts take their
    budget in part order, so the part that the hashing waits for always holds its own.
    """

    def __init__(
        self, copier: PartCopier, item: ObjectCopy, upload_id: str, sizes: list[int], done: dict[int, str],
        same_layout: bool,
    ):
        self.copier, self.item, self.upload_id = copier, item, upload_id
        self.sizes, self.done = sizes, done
        self.offsets = [0, *itertools.accumulate(sizes[:-1])]
        self.need_bytes = not same_layout
        self.whole = hashlib.new("sha256" if copier.by_sha256 else "md5") if self.need_bytes else None
        self.sent = 0  # bytes uploaded now (parts an earlier run finished not counted)
        self.results: dict[int, tuple[str, bytes]] = {}  # part -> (its ETag, MD5 of the bytes read)
        self.holding: dict[int, memoryview] = {}  # part -> its buffer, from the budget
        self.held: dict[int, memoryview] = {}  # finished parts waiting for the in-order hash
        self.next_hash = 1
        self.hashing = asyncio.Lock()  # one part at a time into the whole-object hash, in part order
        self.slots = asyncio.Semaphore(copier.part_window)
        self.failed: list[BaseException] = []

    async def run(self) -> tuple[list[tuple[int, str, bytes]], int, str | None]:
        """(number, ETag, MD5) per part, bytes sent, and the whole-object digest (hex; None in the
        source's own layout, where the source's ETag is the proof)."""
        running: list[asyncio.Task[None]] = []
        try:
            for number in range(1, len(self.sizes) + 1):
                if self.failed:
                    break
                if number in self.done and not self.need_bytes:
                    self.results[number] = (self.done[number], b"")
                    continue
                self.holding[number] = await self.copier.budget.take(self.sizes[number - 1])
                await self.slots.acquire()
                if self.failed:  # while this part waited, another one failed
                    break
                running.append(asyncio.ensure_future(self._send(number)))
            await asyncio.gather(*running)
            if self.failed:
                raise self.failed[0]
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self.held.clear()
            for number in list(self.holding):
                await self._free(number)
        parts = [(n, *self.results[n]) for n in range(1, len(self.sizes) + 1)]
        return parts, self.sent, self.whole.hexdigest() if self.whole is not None else None

    async def _send(self, number: int) -> None:
        try:
            data, md5 = await self._read(number)
            if number in self.done and md5.hex() == self.done[number]:
                etag = self.done[number]
            else:
                etag = await self._upload(number, data, md5)
            self.results[number] = (etag, md5)
            if self.need_bytes:
                self.held[number] = data
                await self._hash_in_order()
        except BaseException as exc:
            self.failed.append(exc)
            raise
        finally:
            self.slots.release()
            if number not in self.held:
                await self._free(number)

    async def _read(self, number: int) -> tuple[memoryview, bytes]:
        """Part ``number``'s bytes from the source, and their MD5 (with a layout of our own)."""
        copier, item, data = self.copier, self.item, self.holding[number]
        size, start = self.sizes[number - 1], self.offsets[number - 1]
        byte_range = f"bytes={start}-{start + size - 1}"
        # If-Match: the part is of the object planned. With verification by SHA-256 the ETag
        # is opaque (it may be a gateway's own): the answer's ETag is compared instead
        answer, got = await copier.retry(
            f"{item.src_key}: GET part {number}",
            lambda: copier.src_data.get(
                copier.src_bucket, item.src_key, data, byte_range=byte_range,
                if_match=None if copier.by_sha256 else f'"{item.etag}"',
            ),
        )
        if copier.by_sha256:
            check_unchanged(item, etag_of(answer.get("ETag", "")), item.size)
        if got != size:
            raise TransferError(f"{item.src_key}: part {number} returned {got} bytes, expected {size}")
        return data, await digest("md5", data) if self.need_bytes else b""

    async def _upload(self, number: int, data: memoryview, md5: bytes) -> str:
        """Upload part ``number``; its ETag."""
        copier, item, size = self.copier, self.item, self.sizes[number - 1]
        content_md5 = base64.b64encode(md5).decode() if self.need_bytes else None
        resp = await copier.retry(
            f"{item.dst_key}: PUT part {number}",
            lambda: copier.dst_data.upload_part(
                copier.dst_bucket, item.dst_key, self.upload_id, number, data, content_md5=content_md5
            ),
        )
        self.sent += size
        copier.on_bytes(size)
        etag = etag_of(resp["ETag"])
        # (a part's ETag is no MD5 where ETags are not, e.g. SSE-KMS: SHA-256 checks then)
        if self.need_bytes and not copier.by_sha256 and etag != md5.hex():
            raise TransferError(f"{item.dst_key}: part {number} arrived with ETag {etag}, sent {md5.hex()}")
        return etag

    async def _hash_in_order(self) -> None:
        async with self.hashing:
            while self.next_hash in self.held:
                number = self.next_hash
                data = self.held.pop(number)
                self.next_hash += 1
                await asyncio.to_thread(self._update, data)  # hashlib releases the GIL: the loop goes on
                await self._free(number)

    def _update(self, data: memoryview) -> None:
        assert self.whole is not None
        self.whole.update(data)

    async def _free(self, number: int) -> None:
        buffer = self.holding.pop(number, None)
        if buffer is not None:
            await self.copier.budget.give(buffer)


def _fits(part: int, count: int, size: int) -> bool:
    """``count`` parts of ``part`` bytes (the last one smaller or equal) make ``size`` bytes."""
    return part > 0 and part * (count - 1) < size <= part * count


def _within_limits(part: int, count: int) -> bool:
    """Parts of ``part`` bytes, ``count`` of them, are what S3 takes (a lone part may be smaller)."""
    return (count == 1 or part >= MIN_PART_SIZE) and part <= MAX_PART_SIZE and count <= MAX_PARTS


def _sizes(part: int, size: int) -> list[int]:
    count = max(1, -(-size // part))
    return [part] * (count - 1) + [size - part * (count - 1)]


def _layout_of(parts: dict[int, tuple[int, str]], size: int) -> list[int] | None:
    """The layout an upload's listed parts show (its full parts are its largest), if every one fits it."""
    if not parts:
        return None
    part = max(s for s, _ in parts.values())
    if -(-size // part) > MAX_PARTS:
        return None
    layout = _sizes(part, size)
    return layout if all(n <= len(layout) and layout[n - 1] == s for n, (s, _) in parts.items()) else None


def check_unchanged(item: ObjectCopy, etag: str, size: int) -> None:
    """The source object is still the one planned (else: rerun, it is planned again)."""
    if etag != item.etag or size != item.size:
        raise TransferError(
            f"{item.src_key}: source object changed since the plan (ETag {etag}, {size} bytes; planned "
            f"{item.etag}, {item.size} bytes): rerun the migration"
        )
