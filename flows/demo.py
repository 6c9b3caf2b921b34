"""``projmig demo``: the whole job on an embedded default, from nothing to a verified migration."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from projmig.sandbox import Sandbox
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.settings import MigrationSettings

from .console import print_report
from .local_run import migrate_with_progress, resolved


async def run_demo(console: Console, *, workdir: Path | None = None, keep: bool = False) -> None:
    from projmig import steps

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="projmig-demo-"))
    sandbox = Sandbox(root)
    console.print(f"Starting two deployments in {root} (PostgreSQL + SeaweedFS each) ...", highlight=False)
    sandbox.start()
    try:
        for dep in sandbox.deployments:
            console.print(f"  {dep.name}: postgresql://127.0.0.1:{dep.pg.port}  s3 {dep.s3.endpoint}", highlight=False)
        src_db, src_ids = await sandbox.source.create_simcore_database("simcoredb", users=["alice", "bob"], groups=["lab"])
        dst_db, dst_ids = await sandbox.destination.create_simcore_database("simcoredb", users=["admin", "alice.aws"], skip_user_ids=41)
        src_s3 = await sandbox.source.create_bucket("simcore-onprem")
        dst_s3 = await sandbox.destination.create_bucket("simcore-aws")
        alice = src_ids.users["alice"]
        console.print("Seeding a study: 5 nodes, 30 files (a 40 MiB multipart object, a directory of 10 objects, "
                      "a soft link) and 2 hidden job projects ...", highlight=False)
        sample = await build_sample_project(
            src_db, src_s3, owner_id=alice.id, spec=SampleSpec(share_with_gids=[src_ids.groups["lab"], src_ids.everyone_gid])
        )

        # credentials by reference, as an operator's cfg.json would have them
        os.environ.update(
            DEMO_SOURCE_DB_PASSWORD=sandbox.source.pg_password,
            DEMO_SOURCE_S3_SECRET=sandbox.source.s3_secret_key,
            DEMO_DEST_DB_PASSWORD=sandbox.destination.pg_password,
            DEMO_DEST_S3_SECRET=sandbox.destination.s3_secret_key,
        )
        config = {
            "source": {
                "db": {**_db(src_db), "password": {"env": "DEMO_SOURCE_DB_PASSWORD"}},
                "s3": {**_s3(src_s3), "secret_key": {"env": "DEMO_SOURCE_S3_SECRET"}},
                "project_uuid": sample.uuid,
                "include_hidden": True,
            },
            "destination": {
                "db": {**_db(dst_db), "password": {"env": "DEMO_DEST_DB_PASSWORD"}},
                "s3": {**_s3(dst_s3), "secret_key": {"env": "DEMO_DEST_S3_SECRET"}},
                "user_id": dst_ids.users["alice.aws"].id,
            },
        }
        cfg = root / "cfg.json"
        cfg.write_text(json.dumps(config, indent=2))
        console.print(f"Wrote {cfg} (passwords and keys as environment references).", highlight=False)
        settings = MigrationSettings.load(cfg)

        console.rule("projmig migrate")
        print_report(await migrate_with_progress(settings))
        console.rule("projmig verify")
        result = await steps.verify_migration(await resolved(settings), deep=True)
        state = "[green]equal[/]" if result.equal else f"[red]{len(result.differences)} differences[/]"
        console.print(f"{state}: {result.rows_checked} rows, {result.objects_checked} objects (SHA-256)", highlight=False)
        for difference in result.differences:
            console.print(f"  {difference}", highlight=False)
        console.rule("projmig migrate (again)")
        again = await migrate_with_progress(settings)
        console.print(again.headline(), highlight=False)
    finally:
        console.print("Stopping the servers ...", highlight=False)
        sandbox.stop()
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _db(db) -> dict:
    return {"host": db.host, "port": db.port, "user": db.user, "database": db.database}


def _s3(s3) -> dict:
    return {"endpoint": s3.endpoint, "provider": s3.provider.value, "access_key": s3.access_key.get_secret_value(), "bucket": s3.bucket}
