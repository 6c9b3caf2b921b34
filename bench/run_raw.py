"""The physical limit: a bare aiobotocore GET -> PUT loop, no checks, no bookkeeping.

``python -m bench.run_raw OUT.json`` with the job on stdin::

    {"src": {endpoint, access_key, secret_key, bucket}, "dst": {...},
     "objects": [[src_key, dst_key, size], ...], "part_size": ..., "threshold": ...,
     "concurrency": 16, "part_concurrency": 8, "sign_payload": false}

Objects below ``threshold`` are one GET and one PUT; larger ones a multipart upload of
``part_size`` ranges, ``part_concurrency`` parts in flight. Time is measured around the transfers
only (the client is created before), so this is the best a Python S3 client does here.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session


def client(side: dict[str, Any], job: dict[str, Any]) -> Any:
    config = AioConfig(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 3},
        max_pool_connections=max(job["concurrency"], job["part_concurrency"]) * 2,
        s3={"addressing_style": "path", "payload_signing_enabled": bool(job.get("sign_payload", False))},
    )
    return get_session().create_client(
        "s3", endpoint_url=side["endpoint"], region_name="us-east-1",
        aws_access_key_id=side["access_key"], aws_secret_access_key=side["secret_key"], config=config,
    )


async def transfer(job: dict[str, Any]) -> tuple[float, float]:
    sb, db = job["src"]["bucket"], job["dst"]["bucket"]
    async with client(job["src"], job) as src, client(job["dst"], job) as dst:
        slots = asyncio.Semaphore(job["concurrency"])
        part_slots = asyncio.Semaphore(job["part_concurrency"])

        async def get(key: str, byte_range: str | None = None) -> bytes:
            resp = await src.get_object(Bucket=sb, Key=key, **({"Range": byte_range} if byte_range else {}))
            async with resp["Body"] as body:
                return await body.read()

        async def whole(src_key: str, dst_key: str) -> None:
            async with slots:
                await dst.put_object(Bucket=db, Key=dst_key, Body=await get(src_key))

        async def multipart(src_key: str, dst_key: str, size: int) -> None:
            part = job["part_size"]
            upload = (await dst.create_multipart_upload(Bucket=db, Key=dst_key))["UploadId"]

            async def one(number: int) -> dict[str, Any]:
                start = (number - 1) * part
                async with part_slots:
                    data = await get(src_key, f"bytes={start}-{min(size, start + part) - 1}")
                    resp = await dst.upload_part(Bucket=db, Key=dst_key, UploadId=upload, PartNumber=number, Body=data)
                return {"PartNumber": number, "ETag": resp["ETag"]}

            parts = await asyncio.gather(*(one(n) for n in range(1, -(-size // part) + 1)))
            await dst.complete_multipart_upload(Bucket=db, Key=dst_key, UploadId=upload, MultipartUpload={"Parts": parts})

        began, cpu = time.perf_counter(), _cpu()
        await asyncio.gather(*(
            multipart(s, d, size) if size >= job["threshold"] else whole(s, d) for s, d, size in job["objects"]
        ))
        return time.perf_counter() - began, _cpu() - cpu


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    job = json.loads(sys.stdin.read())
    seconds, cpu = asyncio.run(transfer(job))
    with open(sys.argv[1], "w") as fh:
        json.dump({"transfer_seconds": seconds, "transfer_cpu_seconds": cpu, "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, fh)


if __name__ == "__main__":
    main()
