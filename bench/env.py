"""The bench's deployments: two PostgreSQL + two SeaweedFS servers on 127.0.0.1 (the sandbox the
tests use), a source database and bucket seeded with the sample builder, and a fresh destination
(database from a template + empty bucket) for every measured run, so that runs are comparable.

A destination's bucket is emptied after its run and handed to the next one, not deleted: a deployment
keeps its bucket (and a new bucket per run grew SeaweedFS's memory faster, which, under the suite's
Go memory limit, slowed it round after round; the bench's servers now run without that limit:
docs/performance.md). Each destination has a Prefect result
storage of its own, so that a projmig run never finds the copy task cache of an earlier round's run
into the same bucket name (what a fresh bucket name ensured before)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projmig.s3 import s3_client
from projmig.sandbox import LocalDeployment, Sandbox, free_port
from projmig.sandbox.processes import prefect_server_env, start_prefect_server, stop_process
from projmig.sandbox.sample import SampleProject, SampleSpec, build_sample_project
from projmig.settings import DatabaseSettings, S3Settings

REPO = Path(__file__).resolve().parent.parent


def arun(coro: Any) -> Any:
    return asyncio.run(coro)


def plain(settings: DatabaseSettings | S3Settings) -> dict[str, Any]:
    """Settings as JSON with the (throwaway sandbox) secrets in clear: for the bench's own children."""
    data = settings.model_dump(mode="json", exclude_none=True)
    for name in ("password", "access_key", "secret_key"):
        value = getattr(settings, name, None)
        if value is not None:
            data[name] = value.get_secret_value()
    return data


@dataclass
class Destination:
    db: DatabaseSettings
    s3: S3Settings
    deployment: LocalDeployment  # whose S3 server holds the bucket
    serial: int = 0  # this destination's number in the bench env (its own Prefect result storage)
    keep_bucket: bool = True  # emptied after the run for the next one (else deleted)


class BenchEnv:
    """Servers, source data and fresh destinations. ``sandbox`` may be one already running (tests)."""

    def __init__(self, workdir: Path, *, sandbox: Sandbox | None = None, prefect_api_url: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._own_sandbox = sandbox is None
        self.sandbox = sandbox or Sandbox(self.workdir / "servers")
        if self._own_sandbox:
            # SeaweedFS without the suite's Go memory limit (300 MiB): near it, Go's collector ran so
            # often that each server's CPU per request doubled after a few rounds; a deployment's S3
            # server has its memory (docs/performance.md)
            for dep in (self.sandbox.source, self.sandbox.destination):
                dep.s3.memory_limit = None
        self.tag = f"{os.getpid()}"
        self.prefect_api_url = prefect_api_url
        self._prefect: subprocess.Popen[bytes] | None = None
        self._counter = itertools.count()
        self._spare_buckets: dict[str, list[S3Settings]] = {}  # emptied, by S3 endpoint: the next runs'
        self.owner_id = 0
        self.dst_user_id = 0
        self.profile_dir: Path | None = None  # py-spy profiles of the projmig runs go here

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, *, prefect: str = "server") -> BenchEnv:
        started = time.perf_counter()
        if self._own_sandbox:
            self.sandbox.start()
        arun(self._databases())
        if prefect == "server" and self.prefect_api_url is None:
            self._start_prefect_server()
        self.startup_seconds = time.perf_counter() - started
        return self

    async def _databases(self) -> None:
        src, dst = self.sandbox.source, self.sandbox.destination
        self.source_db, src_ids = await src.create_simcore_database(f"bench_src_{self.tag}", users=["alice"])
        self.template = f"bench_dst_tpl_{self.tag}"
        _, dst_ids = await dst.create_simcore_database(self.template, users=["admin", "carol"], skip_user_ids=10)
        self.source_s3 = await src.create_bucket(f"bench-src-{self.tag}")
        self.owner_id = src_ids.users["alice"].id
        self.dst_user_id = dst_ids.users["carol"].id
        self._databases_made = [(src, self.source_db.database), (dst, self.template)]

    def prefect_env(self) -> dict[str, str]:
        """Environment of every projmig child: a Prefect API shared by the whole bench (warm, like a
        deployment's server), or none (each child starts Prefect's ephemeral API, like the CLI)."""
        env = {
            "PREFECT_HOME": str(self.workdir / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",  # what `projmig migrate` sets without --verbose
        }
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        return env

    def stop_local_api(self) -> None:
        """Stop the local Prefect server a CLI run without PREFECT_API_URL started (flows/local_api.py)."""
        from flows.local_api import stop_local_api

        home = os.environ.get("PREFECT_HOME")
        os.environ["PREFECT_HOME"] = self.prefect_env()["PREFECT_HOME"]
        try:
            stop_local_api()
        finally:
            if home is None:
                os.environ.pop("PREFECT_HOME")
            else:
                os.environ["PREFECT_HOME"] = home

    def _start_prefect_server(self) -> None:
        port = free_port()
        env = prefect_server_env({**os.environ, **self.prefect_env()}, services=True)
        # as users run it, minus the services that would only add noise here (no schedules, no late runs)
        self._prefect = start_prefect_server(port, env=env, log=self.workdir / "prefect-server.log", services=True,
                                             options=["--no-scheduler", "--no-late-runs"], timeout=180)
        self.prefect_api_url = f"http://127.0.0.1:{port}/api"

    def stop(self) -> None:
        stop_process(self._prefect, timeout=15, group=True)
        self._prefect = None
        if self._own_sandbox:
            self.sandbox.stop()
            shutil.rmtree(self.workdir / "servers", ignore_errors=True)
        else:
            arun(self._drop_own())

    async def _drop_own(self) -> None:
        for dep, name in getattr(self, "_databases_made", []):
            await dep.drop_database(name)
        await empty_bucket(self.source_s3, delete=True)
        for spare in self._spare_buckets.values():
            for s3 in spare:
                await empty_bucket(s3, delete=True)
        self._spare_buckets.clear()

    # -- data ------------------------------------------------------------------------------------

    def seed(self, spec: SampleSpec) -> SampleProject:
        spec = dataclasses.replace(spec, seed=1000 + next(self._counter))  # a project (uuids) of its own
        return arun(build_sample_project(self.source_db, self.source_s3, owner_id=self.owner_id, spec=spec))

    def fresh_destination(self, *, same_endpoint: bool = False, with_db: bool = True,
                          template: str | None = None, new_bucket: bool = False) -> Destination:
        """A new database (from the destination template, or ``template`` on the destination's server)
        and an empty bucket (one an earlier destination emptied, or a new one; ``new_bucket``: a new
        one, deleted after: for copy task runs whose Prefect results are not this destination's own,
        e.g. on Dask workers)."""
        n = next(self._counter)
        dep = self.sandbox.source if same_endpoint else self.sandbox.destination
        template = template or self.template

        async def make() -> Destination:
            db = self.sandbox.destination.database(template)
            if with_db:
                db = await self.sandbox.destination.create_database(f"bench_dst_{self.tag}_{n}", template=template)
            spare = [] if new_bucket else self._spare_buckets.get(dep.s3.endpoint or "")
            s3 = spare.pop() if spare else await dep.create_bucket(f"bench-dst-{self.tag}-{n}")
            return Destination(db=db, s3=s3, deployment=dep, serial=n, keep_bucket=not new_bucket)

        return arun(make())

    def drop_destination(self, dest: Destination) -> None:
        async def drop() -> None:
            if dest.db.database != self.template:
                await self.sandbox.destination.drop_database(dest.db.database or "")
            await empty_bucket(dest.s3, delete=not dest.keep_bucket)
            if dest.keep_bucket:
                self._spare_buckets.setdefault(dest.deployment.s3.endpoint or "", []).append(dest.s3)

        arun(drop())

    def result_storage(self, dest: Destination) -> Path:
        """Where a projmig run into ``dest`` keeps its Prefect results (the copy task's cache)."""
        return self.workdir / "prefect-results" / str(dest.serial)

    def settings(self, project: str, dest: Destination, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "source": {"db": plain(self.source_db), "s3": plain(self.source_s3), "project_uuid": project},
            "destination": {"db": plain(dest.db), "s3": plain(dest.s3), "user_id": self.dst_user_id},
            "options": dict(options or {}),
        }

    # -- the other tools' configuration ----------------------------------------------------------

    def rclone_env(self) -> dict[str, str]:
        """rclone remotes ``src`` and ``dst`` from the environment (no config file with secrets)."""
        env = {"RCLONE_CONFIG": str(self.workdir / "rclone.conf")}
        (self.workdir / "rclone.conf").touch()
        for name, dep in (("SRC", self.sandbox.source), ("DST", self.sandbox.destination)):
            prefix = f"RCLONE_CONFIG_{name}_"
            env.update({
                prefix + "TYPE": "s3",
                prefix + "PROVIDER": "SeaweedFS",
                prefix + "ACCESS_KEY_ID": dep.s3_access_key,
                prefix + "SECRET_ACCESS_KEY": dep.s3_secret_key,
                prefix + "ENDPOINT": dep.s3.endpoint,
                prefix + "REGION": "us-east-1",
            })
        return env

    @staticmethod
    def s5cmd_env(dep: LocalDeployment) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": dep.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": dep.s3_secret_key,
            "AWS_REGION": "us-east-1",
            "S3_ENDPOINT_URL": dep.s3.endpoint,
        }


async def empty_bucket(s3: S3Settings, *, delete: bool = False) -> None:
    async with s3_client(s3) as client:
        try:
            uploads = (await client.list_multipart_uploads(Bucket=s3.bucket)).get("Uploads", [])
        except Exception:  # the bucket is gone already
            return
        for upload in uploads:
            await client.abort_multipart_upload(Bucket=s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=s3.bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await client.delete_objects(Bucket=s3.bucket, Delete={"Objects": keys, "Quiet": True})
        if delete:
            await client.delete_bucket(Bucket=s3.bucket)
