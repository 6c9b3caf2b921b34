"""The suite's Ceph: a real monitor, OSD and RADOS Gateway, started and stopped by PID, speaking S3
with the credentials it was given; a start that fails is tried once more, then fails with one error."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError

from projmig.s3 import s3_client
from projmig.sandbox import CephServer, ServerError
from projmig.settings import Provider, S3Settings

from ..conftest import unique


def test_three_real_daemons_on_loopback(ceph: CephServer) -> None:
    names = {name: open(f"/proc/{p.pid}/comm").read().strip() for name, p in ceph.processes.items()}
    assert names == {"mon": "ceph-mon", "osd": "ceph-osd", "rgw": "radosgw"}
    for process in ceph.processes.values():
        os.kill(process.pid, 0)
        assert process.poll() is None
    assert ceph.endpoint.startswith("http://127.0.0.1:")


async def test_s3_with_its_own_credentials_only(ceph: CephServer) -> None:
    bucket = await ceph.create_bucket(unique("ceph"))
    assert bucket.provider == Provider.CEPH
    async with s3_client(bucket) as client:
        await client.put_object(Bucket=bucket.bucket, Key="a/b.txt", Body=b"hello")
        resp = await client.get_object(Bucket=bucket.bucket, Key="a/b.txt")
        assert await resp["Body"].read() == b"hello"
    wrong = S3Settings(**{**bucket.model_dump(), "access_key": ceph.access_key, "secret_key": "not-the-secret"})
    async with s3_client(wrong) as client:
        with pytest.raises(ClientError) as info:
            await client.list_objects_v2(Bucket=bucket.bucket)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.ceph  # Ceph's binaries, no cluster of the session's
def test_a_start_that_fails_is_tried_once_more_then_says_why(tmp_path) -> None:
    # a monitor store under a regular file: ceph-mon --mkfs fails, for real, both times
    (tmp_path / "not-a-directory").write_text("")
    server = CephServer(tmp_path / "ceph", access_key="AKTEST", secret_key="secret",
                        extra_conf=f"\n[mon.a]\nmon data = {tmp_path / 'not-a-directory' / 'mon'}\n")
    with pytest.raises(ServerError) as failed:
        server.start()
    assert len(server.attempts) == 2 and "ceph-mon" in server.attempts[0] and "ceph-mon" in server.attempts[1]
    message = str(failed.value)
    assert message.startswith("Ceph did not start (tried twice): `ceph-mon") and "--mkfs" in message
    assert server.processes == {}
    assert not (tmp_path / "ceph" / "attempt-3").exists()
