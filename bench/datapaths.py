"""Data paths compared (issue 26, point 7): ``python -m bench datapaths [--runs 3] [--large-mib 1024]``.

The same work on the same data in the same run, against two SeaweedFS servers of the sandbox
(:class:`projmig.sandbox.SeaweedServer`, source and destination):

- **small**: 1,000 objects of 64 KiB, each a GET from the source (its ETag checked against the
  listing's) and a PUT into the destination carrying projmig's mark (``x-amz-meta-projmig-copy``),
  the PUT's ETag checked against the source's; 16 objects in flight.
- **large**: one 1 GiB object of the source, uploaded there in 16 MiB parts, copied in the source's
  part layout: a multipart upload created with the mark, each part a ranged GET and an UploadPart
  (8 in flight), completed; the destination's ETag must equal the source's.

Each path runs in a process of its own, timed around the transfer only (clients made before):

- ``lean``: projmig's lean data path (:class:`projmig.s3data.LeanData`, aiohttp and its own SigV4;
  multipart create/complete through botocore, as projmig does);
- ``botocore``: the same calls through aiobotocore (:class:`projmig.s3data.BotoData`);
- ``obstore``: obstore (Rust's object_store): ``get_async`` and ``put_async`` with the mark as an
  attribute; the large object as one ``put_async`` of the ranged GETs (streamed, 8 parts fetched
  ahead) with ``chunk_size`` = the source's part size, so that the parts are the source's;
- ``copier``: projmig's whole :class:`projmig.copier.ObjectCopier` on the lean path (what a
  migration does per object on top of the calls: the part layout asked, the upload recorded in its
  ledger, every check), for reference.

Each run writes into a new destination bucket, written to once before (SeaweedFS grows a volume for
a bucket's first object, ~1 s here). Every path sends bodies unsigned (``UNSIGNED-PAYLOAD``) and no Content-MD5: what proves a copy is
the ETag. After each run the destination is listed: every object there, with the source's size and
ETag, and (HEAD of a sample and of the large object) the mark. ``--capabilities`` also prints what
obstore can and cannot do of what projmig needs, asked of the server. Medians of ``--runs``; the
order of the paths rotates per round. Results: a table, and ``bench/results/datapaths-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KiB, MiB = 1024, 1024 * 1024
PATHS = ("lean", "botocore", "obstore", "copier")
RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
MARK = "source=bench;copy=bench"  # projmig.marks.mark_of of keys under bench/
SPAN: dict[str, float] = {}  # the child's CPU seconds at the transfer's start and end


# -- the child: one path, one scenario, timed around the transfer ---------------------------------


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread's (obstore's Rust runtime too)
    return usage.ru_utime + usage.ru_stime


def _settings(side: dict[str, Any]) -> Any:
    from projmig.settings import Provider, S3Settings

    return S3Settings(endpoint=side["endpoint"], provider=Provider.MINIO, access_key=side["access_key"],
                      secret_key=side["secret_key"], bucket=side["bucket"])


async def _projmig_path(job: dict[str, Any], lean: bool) -> float:
    """The calls through projmig's data path (lean or botocore); returns the transfer's seconds."""
    from projmig.budget import ByteBudget
    from projmig.marks import COPY_MARK
    from projmig.s3 import s3_client
    from projmig.s3data import data_path

    src_s3, dst_s3 = _settings(job["src"]), _settings(job["dst"])
    sb, db = src_s3.bucket, dst_s3.bucket
    pool = max(job["concurrency"], job["part_concurrency"]) + 4
    # the buffers as the copier has them (reused), room for every call in flight: bounds nothing here
    largest = job["part_size"] if job["scenario"] == "large" else max(s for _, s, _ in job["objects"])
    budget = ByteBudget(pool * largest)
    async with s3_client(src_s3, max_connections=pool) as sc, s3_client(dst_s3, max_connections=pool) as dc, \
            data_path(src_s3, sc, lean=lean, max_connections=pool) as src, \
            data_path(dst_s3, dc, lean=lean, max_connections=pool) as dst:
        slots = asyncio.Semaphore(job["concurrency"])

        async def small(key: str, size: int, etag: str) -> None:
            async with slots, budget.buffer(size) as data:
                resp, got = await src.get(sb, key, data)
                assert got == size and resp["ETag"].strip('"') == etag, key
                put = await dst.put(db, key, data, Metadata={COPY_MARK: MARK})
                assert put["ETag"].strip('"') == etag, key

        async def large(key: str, size: int, etag: str) -> None:
            part = job["part_size"]
            upload = (await dc.create_multipart_upload(Bucket=db, Key=key, Metadata={COPY_MARK: MARK}))["UploadId"]
            part_slots = asyncio.Semaphore(job["part_concurrency"])

            async def one(number: int) -> dict[str, Any]:
                start = (number - 1) * part
                end = min(size, start + part)
                async with part_slots, budget.buffer(end - start) as data:
                    _, got = await src.get(sb, key, data, byte_range=f"bytes={start}-{end - 1}", if_match=f'"{etag}"')
                    assert got == end - start
                    resp = await dst.upload_part(db, key, upload, number, data)
                return {"PartNumber": number, "ETag": resp["ETag"]}

            parts = await asyncio.gather(*(one(n) for n in range(1, -(-size // part) + 1)))
            done = await dc.complete_multipart_upload(Bucket=db, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
            assert done["ETag"].strip('"') == etag, (done["ETag"], etag)

        began, SPAN['cpu0'] = time.perf_counter(), _cpu()
        await asyncio.gather(*((large if job["scenario"] == "large" else small)(k, s, e) for k, s, e in job["objects"]))
        SPAN['cpu1'] = _cpu()
        return time.perf_counter() - began


async def _copier_path(job: dict[str, Any]) -> float:
    """projmig's ObjectCopier on the lean data path, as a migration runs it."""
    from projmig.copier import ObjectCopier
    from projmig.plan import ObjectCopy
    from projmig.s3 import Retrier, s3_client
    from projmig.s3data import data_path

    src_s3, dst_s3 = _settings(job["src"]), _settings(job["dst"])
    pool = max(job["concurrency"], job["part_concurrency"]) + 4
    async with s3_client(src_s3, max_connections=pool) as sc, s3_client(dst_s3, max_connections=pool) as dc, \
            data_path(src_s3, sc, max_connections=pool) as src, data_path(dst_s3, dc, max_connections=pool) as dst:
        copier = ObjectCopier(sc, dc, src_s3.bucket, dst_s3.bucket, retry=Retrier(), concurrency=job["concurrency"],
                              part_concurrency=job["part_concurrency"], multipart_chunksize=job["part_size"],
                              memory_limit=max(128 * MiB, 2 * job["part_concurrency"] * job["part_size"]),
                              src_data=src, dst_data=dst)
        items = [(ObjectCopy(src_key=k, dst_key=k, size=s, etag=e, file_id=k), None) for k, s, e in job["objects"]]
        began, SPAN['cpu0'] = time.perf_counter(), _cpu()
        outcomes = await copier.copy_all(items)
        took, SPAN['cpu1'] = time.perf_counter() - began, _cpu()
        assert all(o.etag == e for o, (_, _, e) in zip(sorted(outcomes, key=lambda o: o.dst_key), sorted(job["objects"])))
        return took


def _obstore(side: dict[str, Any]) -> Any:
    from obstore.store import S3Store

    return S3Store(side["bucket"], endpoint=side["endpoint"], access_key_id=side["access_key"],
                   secret_access_key=side["secret_key"], region="us-east-1", virtual_hosted_style_request=False,
                   unsigned_payload=True, client_options={"allow_http": True, "pool_max_idle_per_host": "32"})


async def _obstore_path(job: dict[str, Any]) -> float:
    import obstore

    src, dst = _obstore(job["src"]), _obstore(job["dst"])
    slots = asyncio.Semaphore(job["concurrency"])

    async def small(key: str, size: int, etag: str) -> None:
        async with slots:
            got = await obstore.get_async(src, key)
            data = await got.bytes_async()
            assert len(data) == size and got.meta["e_tag"].strip('"') == etag, key
            put = await obstore.put_async(dst, key, data, attributes={"projmig-copy": MARK}, use_multipart=False)
            assert (put["e_tag"] or "").strip('"') == etag, key

    async def large(key: str, size: int, etag: str) -> None:
        part = job["part_size"]
        ahead = job["part_concurrency"]

        async def fetch(start: int) -> Any:
            end = min(size, start + part)
            got = await obstore.get_async(src, key, options={"range": (start, end), "if_match": f'"{etag}"'})
            return await got.bytes_async()

        async def parts() -> Any:  # the source's parts in order, `ahead` of them fetched at once
            starts = list(range(0, size, part))
            pending = [asyncio.ensure_future(fetch(s)) for s in starts[:ahead]]
            for i in range(len(starts)):
                data = await pending[i]
                pending[i] = None  # type: ignore[call-overload]
                if i + ahead < len(starts):
                    pending.append(asyncio.ensure_future(fetch(starts[i + ahead])))
                yield data

        put = await obstore.put_async(dst, key, parts(), attributes={"projmig-copy": MARK}, use_multipart=True,
                                      chunk_size=part, max_concurrency=ahead)
        assert (put["e_tag"] or "").strip('"') == etag, (put, etag)

    began, SPAN['cpu0'] = time.perf_counter(), _cpu()
    await asyncio.gather(*((large if job["scenario"] == "large" else small)(k, s, e) for k, s, e in job["objects"]))
    SPAN['cpu1'] = _cpu()
    return time.perf_counter() - began


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: ru_maxrss would carry the forking parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(out: str) -> None:
    job = json.loads(sys.stdin.read())
    runner = {"lean": lambda: _projmig_path(job, True), "botocore": lambda: _projmig_path(job, False),
              "obstore": lambda: _obstore_path(job), "copier": lambda: _copier_path(job)}[job["path"]]
    seconds = asyncio.run(runner())  # (CPU: this process's, every thread's, over the transfer only)
    Path(out).write_text(json.dumps({"seconds": seconds, "cpu_seconds": SPAN["cpu1"] - SPAN["cpu0"],
                                     "peak_rss_mb": _peak_rss_mb()}))


# -- the orchestrator: servers, data, rounds, checks ----------------------------------------------


def _side(store: Any, bucket: str) -> dict[str, Any]:
    return {"endpoint": store.endpoint, "access_key": store.access_key, "secret_key": store.secret_key, "bucket": bucket}


async def _seed(store: Any, bucket: str, small: int, small_size: int, large: int, part: int) -> tuple[list, list]:
    """The source's objects: (key, size, ETag) of the small ones and of the large one."""
    from projmig.s3 import s3_client

    settings = await store.create_bucket(bucket)
    rng = random.Random(26)
    async with s3_client(settings, max_connections=32) as client:
        slots = asyncio.Semaphore(16)

        async def put(i: int) -> tuple[str, int, str]:
            key, body = f"bench/small/{i:05d}.bin", rng.randbytes(small_size)
            async with slots:
                resp = await client.put_object(Bucket=bucket, Key=key, Body=body)
            return key, small_size, resp["ETag"].strip('"')

        smalls = list(await asyncio.gather(*(put(i) for i in range(small))))
        key = "bench/large/one.bin"
        upload = (await client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        parts = []
        for number, start in enumerate(range(0, large, part), 1):
            body = os.urandom(min(part, large - start))
            resp = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)
            parts.append({"PartNumber": number, "ETag": resp["ETag"]})
        done = await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
        return smalls, [(key, large, done["ETag"].strip('"'))]


async def _check(store: Any, bucket: str, objects: list, path: str) -> None:
    """Every object arrived with its source's size and ETag; a sample (and any large one) bears the mark."""
    from projmig.buckets import list_prefix
    from projmig.s3 import Retrier, s3_client

    settings = store.bucket(bucket)
    async with s3_client(settings) as client:
        listed = await list_prefix(client, bucket, "bench/", Retrier())
        wrong = [k for k, s, e in objects if k not in listed or (listed[k].size, listed[k].etag) != (s, e)]
        assert not wrong, f"{path}: {len(wrong)} objects differ from the source, e.g. {wrong[:3]}"
        for key, _, _ in random.Random(0).sample(objects, min(5, len(objects))):
            meta = (await client.head_object(Bucket=bucket, Key=key)).get("Metadata", {})
            assert meta.get("projmig-copy") == MARK, f"{path}: {key} carries {meta}"


async def _fresh_bucket(store: Any, bucket: str) -> None:
    """A new bucket, written to once (SeaweedFS grows a volume for a bucket's first object: ~1 s here,
    not the path's time)."""
    from projmig.s3 import s3_client

    settings = await store.create_bucket(bucket)
    async with s3_client(settings) as client:
        await client.put_object(Bucket=bucket, Key="warm-up", Body=b"x")
        await client.delete_object(Bucket=bucket, Key="warm-up")


async def _drop(store: Any, bucket: str) -> None:
    from projmig.s3 import s3_client

    async with s3_client(store.bucket(bucket)) as client:
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                await client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        await client.delete_bucket(Bucket=bucket)


def _run_child(job: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bench.datapaths", "child", out.name], input=json.dumps(job),
                              text=True, capture_output=True, cwd=REPO, timeout=1800)
        written = Path(out.name).read_text()
        if done.returncode != 0 and not written:
            raise RuntimeError(f"{job['path']} {job['scenario']}: exit {done.returncode}: {done.stderr[-2000:]}")
        # a process that did its work and then died on its way out is counted, not hidden (obstore's
        # Rust runtime: SIGABRT at interpreter exit now and then)
        return {**json.loads(written), "process_seconds": time.perf_counter() - began, "exit_code": done.returncode}


async def capabilities(store: Any) -> list[tuple[str, str]]:
    """What obstore does of what projmig needs, asked of the server (one line each)."""
    import obstore

    from projmig.s3 import s3_client

    bucket = f"obstore-caps-{secrets.token_hex(3)}"
    settings = await store.create_bucket(bucket)
    st = _obstore(_side(store, bucket))
    found: list[tuple[str, str]] = []
    async with s3_client(settings) as client:
        await obstore.put_async(st, "p/a", b"x" * 1000, attributes={"projmig-copy": MARK, "Content-Type": "text/plain"})
        head = await client.head_object(Bucket=bucket, Key="p/a")
        found.append(("user metadata on PUT", f"yes (attributes: x-amz-meta-projmig-copy={head['Metadata'].get('projmig-copy')!r})"))
        await obstore.put_async(st, "p/m", os.urandom(11 * MiB), attributes={"projmig-copy": MARK}, use_multipart=True,
                                chunk_size=5 * MiB)
        head = await client.head_object(Bucket=bucket, Key="p/m")
        found.append(("user metadata on a multipart upload", f"yes (the completed object: {head['Metadata']}, ETag {head['ETag']}: "
                      "parts of chunk_size, the last shorter)"))
        outcomes = []
        for mode in ("create", {"e_tag": '"00000000000000000000000000000000"'}):
            try:
                await obstore.put_async(st, "p/a", b"y", mode=mode)  # type: ignore[arg-type]
                outcomes.append(f"{mode}: written")
            except Exception as exc:
                outcomes.append(f"{mode}: {type(exc).__name__}")
        found.append(("conditional writes (If-None-Match / If-Match on PUT)", "yes, single-part only: " + "; ".join(outcomes)))
        try:
            await obstore.get_async(st, "p/m", options={"range": (0, 10), "if_match": '"0"'})
            found.append(("ranged GET held to an ETag", "no: a wrong ETag was served"))
        except Exception as exc:
            found.append(("ranged GET held to an ETag", f"yes ({type(exc).__name__} for a wrong one)"))
        api = {n for n in dir(obstore) if not n.startswith("_")} | {n for n in dir(st) if not n.startswith("_")}
        multipart = sorted(n for n in api if "part" in n.lower() or "upload" in n.lower())
        found.append(("an upload's id, ListParts, UploadPart into an existing upload (resume; projmig's ledger)",
                      f"no: multipart uploads are internal to put/open_writer (API names with part/upload: {multipart or 'none'})"))
        await obstore.copy_async(st, "p/a", "p/c")
        head = await client.head_object(Bucket=bucket, Key="p/c")
        found.append(("server-side copy with metadata REPLACE (the mark) and a source ETag condition",
                      f"no: copy_async(from, to, overwrite) within one store keeps the source's metadata ({head['Metadata']})"))
        sums = _obstore(_side(store, bucket))
        sums = type(sums)(bucket, endpoint=store.endpoint, access_key_id=store.access_key, secret_access_key=store.secret_key,
                          region="us-east-1", virtual_hosted_style_request=False, client_options={"allow_http": True},
                          checksum_algorithm="SHA256")
        await obstore.put_async(sums, "p/s", b"z" * 100)
        head = await client.head_object(Bucket=bucket, Key="p/s", ChecksumMode="ENABLED")
        found.append(("checksums", f"its own only: checksum_algorithm SHA256 or CRC64NVME, computed of what it sends "
                      f"(stored: {head.get('ChecksumSHA256')}); a given value (the source's stored checksum) cannot be sent"))
    await _drop(store, bucket)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        child(argv[1])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench datapaths", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=1000, help="small objects (default 1000)")
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"of {', '.join(PATHS)}")
    parser.add_argument("--scenarios", default="small,large")
    parser.add_argument("--capabilities", action="store_true", help="also ask what obstore can do of projmig's needs")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    paths, scenarios = args.paths.split(","), args.scenarios.split(",")
    try:
        import obstore  # noqa: F401
    except ImportError:
        if "obstore" in paths:
            print("obstore is not installed (pip install obstore): its path is left out")
            paths = [p for p in paths if p != "obstore"]

    from projmig.sandbox import SeaweedServer

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="projmig-datapaths-"))
    key = secrets.token_hex(8)
    servers = [SeaweedServer(workdir / side, access_key=f"AK{key.upper()}", secret_key=secrets.token_urlsafe(24))
               for side in ("source", "destination")]
    for server in servers:
        server.memory_limit = None  # as the bench's own servers (bench/env.py): no Go memory limit
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "load_before": os.getloadavg(),
                              "runs": args.runs, "samples": {}}
    try:
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_ready()
        source, destination = servers
        began = time.perf_counter()
        smalls, larges = asyncio.run(_seed(source, "bench-source", args.small, args.small_kib * KiB,
                                           args.large_mib * MiB, args.part_mib * MiB))
        print(f"seeded {len(smalls)} x {args.small_kib} KiB and {args.large_mib} MiB in {args.part_mib} MiB parts "
              f"in {time.perf_counter() - began:.1f} s; load {os.getloadavg()[0]:.2f}")
        if args.capabilities:
            report["capabilities"] = asyncio.run(capabilities(destination))
            for what, answer in report["capabilities"]:
                print(f"  obstore, {what}: {answer}")
        objects = {"small": smalls, "large": larges}
        for round_ in range(args.runs):
            order = paths[round_ % len(paths):] + paths[:round_ % len(paths)]
            for scenario in scenarios:
                for path in order:
                    bucket = f"dp-{path}-{scenario}-{round_}"
                    asyncio.run(_fresh_bucket(destination, bucket))
                    job = {"path": path, "scenario": scenario, "src": _side(source, "bench-source"),
                           "dst": _side(destination, bucket), "objects": objects[scenario],
                           "part_size": args.part_mib * MiB, "concurrency": 16, "part_concurrency": 8}
                    load = os.getloadavg()[0]
                    sample = _run_child(job)
                    asyncio.run(_check(destination, bucket, objects[scenario], path))
                    asyncio.run(_drop(destination, bucket))
                    sample["load"] = load
                    report["samples"].setdefault(f"{scenario}/{path}", []).append(sample)
                    died = f"  EXIT {sample['exit_code']} after its work" if sample["exit_code"] else ""
                    print(f"  round {round_ + 1} {scenario:5} {path:8} {sample['seconds']:7.2f} s  CPU {sample['cpu_seconds']:6.2f} s  "
                          f"RSS {sample['peak_rss_mb']:5.0f} MB  (load {load:.2f}){died}", flush=True)
    finally:
        for server in servers:
            server.stop()
    report["load_after"] = os.getloadavg()
    print(f"\n== data paths, SeaweedFS -> SeaweedFS, {report['date']}, commit {commit}, medians of {args.runs}; "
          f"load {report['load_before'][0]:.2f} -> {report['load_after'][0]:.2f}")
    print(f"{'scenario/path':18} {'median s':>9} {'runs (s)':26} {'rate':>12} {'CPU s':>7} {'RSS MB':>7} {'lean ÷ path':>11}")
    for scenario in scenarios:
        base = report["samples"].get(f"{scenario}/lean")
        for path in paths:
            samples = report["samples"].get(f"{scenario}/{path}")
            if not samples:
                continue
            med = statistics.median(s["seconds"] for s in samples)
            rate = (f"{len(objects[scenario]) / med:8.0f} obj/s" if scenario == "small"
                    else f"{sum(o[1] for o in objects[scenario]) / MiB / med:7.1f} MiB/s")
            cpu = statistics.median(s["cpu_seconds"] for s in samples)
            rss = max(s["peak_rss_mb"] for s in samples)
            ratio = f"{statistics.median(s['seconds'] for s in base) / med:.2f}x" if base else ""
            runs = " ".join(f"{s['seconds']:.2f}" for s in samples)
            died = sum(1 for s in samples if s["exit_code"])
            print(f"{scenario + '/' + path:18} {med:9.2f} {runs:26} {rate:>12} {cpu:7.2f} {rss:7.0f} {ratio:>11}"
                  + (f"  ({died} of {len(samples)} processes died at exit)" if died else ""))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"datapaths-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
