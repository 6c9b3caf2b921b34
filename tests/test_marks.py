"""What makes an upload projmig's (:mod:`projmig.marks`), on real servers: its id in the ledger object
of its key, and nothing else; an upload whose id cannot be written down does not stay open."""

from __future__ import annotations

import json
import os

import pytest

from projmig.buckets import abort_marked_uploads, list_prefix, list_uploads
from projmig.copier import ObjectCopier
from projmig.errors import TransferError
from projmig.marks import COPY_MARK, ledger_key, mark_of, read_record
from projmig.multipart import find_upload
from projmig.s3 import Retrier, s3_client

from .conftest import Simcore
from .faults.proxy import FaultProxy
from .test_copier import copies_of, put_multipart

MiB = 1024 * 1024
retry = Retrier(attempts=3, timeout=60, initial_wait=0.05)


async def test_an_upload_started_after_a_pending_record_is_not_the_migrations(destination_bucket) -> None:
    """An older projmig wrote its ledger object ``pending`` before creating an upload, and took every
    upload of the key started after that record for its own. It was killed before its create; a
    destination user then started an upload of the same key: neither cleanup, nor a copy resuming,
    nor rollback may take it."""
    dst, db = destination_bucket
    key = "p/n/big.bin"
    mark = mark_of(key, key)
    await dst.put_object(Bucket=db, Key=ledger_key(key), Metadata={COPY_MARK: mark},
                         Body=json.dumps({"key": key, "uploads": [], "pending": True}).encode())
    theirs = (await dst.create_multipart_upload(Bucket=db, Key=key))["UploadId"]
    [listed] = await list_uploads(dst, db, "p/", retry)

    record = await read_record(dst, db, key, retry)
    assert record is not None and record.mark == mark and not record.owns(listed, mark)
    upload, done, _ = await find_upload(dst, db, key, [5 * MiB], mark, retry, adopt_layout=False)
    assert upload is None and done == {}
    assert await abort_marked_uploads(dst, db, {key: mark}, retry) == []
    assert [u["UploadId"] for u in await list_uploads(dst, db, "p/", retry)] == [theirs]


@pytest.mark.fault_proxy
async def test_an_upload_whose_id_cannot_be_recorded_is_aborted_at_once(fixture_simcore: Simcore) -> None:
    """The ledger write after CreateMultipartUpload is refused (403): the copy fails and leaves no
    upload open, instead of one that nobody can prove to be projmig's."""
    simcore = fixture_simcore
    async with s3_client(simcore.source_s3) as src:
        await put_multipart(src, simcore.source_s3.bucket, "p/n/big.h5", os.urandom(13 * MiB), part=6 * MiB)
        [copy] = copies_of(await list_prefix(src, simcore.source_s3.bucket, "p/", retry))
    created: list[str] = []

    def ledger_write_after_the_create(method: str, target: str) -> bool:
        if method == "POST" and "?uploads" in target:
            created.append(target)
        return bool(created) and method == "PUT" and "/.projmig-uploads/" in target

    port = simcore.sandbox.destination.s3.s3_port
    with FaultProxy("127.0.0.1", port, name="destination-s3", http=True) as proxy:
        proxy.fail_requests(10, 403, "AccessDenied", match=ledger_write_after_the_create)
        via_proxy = simcore.destination_s3.model_copy(update={"endpoint": proxy.endpoint})
        async with s3_client(simcore.source_s3) as src, s3_client(via_proxy) as dst:
            copier = ObjectCopier(src, dst, simcore.source_s3.bucket, via_proxy.bucket, retry=retry,
                                  multipart_threshold=8 * MiB)
            with pytest.raises(TransferError, match="AccessDenied"):
                await copier.copy_all([(copy, None)])
        assert created and proxy.faults, proxy.faults
    async with s3_client(simcore.destination_s3) as dst:
        assert await list_uploads(dst, simcore.destination_s3.bucket, "p/", retry) == []
