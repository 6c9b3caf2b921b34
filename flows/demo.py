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

from .console import print_report, say
from .local_run import migrate_with_progress, resolved


DEMO_STUDY = "Sample study [v2]"


async def run_demo(console: Console, *, workdir: Path | None = None, keep: bool = False) -> None:
    """``console``: where the demo says what it does (the CLI's ``out``); every name it shows is literal."""
    from projmig import commands

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="projmig-demo-"))
    sandbox = Sandbox(root)
    say(console, f"Starting two deployments in {root} (PostgreSQL + SeaweedFS each) ...")
    sandbox.start()
    try:
        for dep in sandbox.deployments:
            say(console, f"  {dep.name}: postgresql://127.0.0.1:{dep.pg.port}  s3 {dep.s3.endpoint}")
        src_db, src_ids = await sandbox.source.create_simcore_database("simcoredb", users=["alice", "bob"], groups=["lab"])
        dst_db, dst_ids = await sandbox.destination.create_simcore_database("simcoredb", users=["admin", "alice.aws"], skip_user_ids=41)
        src_s3 = await sandbox.source.create_bucket("simcore-onprem")
        dst_s3 = await sandbox.destination.create_bucket("simcore-aws")
        alice = src_ids.users["alice"]
        say(console, "Seeding a study: 5 nodes, 30 files (a 40 MiB multipart object, a directory of 10 objects, "
                      "a soft link) and 2 hidden job projects ...")
        sample = await build_sample_project(
            src_db, src_s3, owner_id=alice.id, spec=SampleSpec(
                # a name as users write them: the brackets are text, not markup (every name is shown literally)
                name=DEMO_STUDY, share_with_gids=[src_ids.groups["lab"], src_ids.everyone_gid])
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
            },
            "destination": {
                "db": {**_db(dst_db), "password": {"env": "DEMO_DEST_DB_PASSWORD"}},
                "s3": {**_s3(dst_s3), "secret_key": {"env": "DEMO_DEST_S3_SECRET"}},
            },
            "choices": {"project_uuid": sample.uuid, "include_hidden": True, "destination_user_id": dst_ids.users["alice.aws"].id},
        }
        cfg = root / "cfg.json"
        cfg.write_text(json.dumps(config, indent=2))
        say(console, f"Wrote {cfg} (passwords and keys as environment references).")
        settings = MigrationSettings.load(cfg)

        console.rule("projmig migrate")
        print_report(await migrate_with_progress(settings), console)
        console.rule("projmig verify")
        result = await commands.verify(await resolved(settings), deep=True)
        summary = f"{result.rows_checked} rows, {result.objects_checked} objects (SHA-256)"
        if result.equal:
            say(console, summary, label="equal:", style="green")
        else:
            say(console, summary, label=f"{len(result.differences)} differences:", style="red")
        for difference in result.differences:
            say(console, difference, label="  differs:", style="red")
        console.rule("projmig migrate (again)")
        again = await migrate_with_progress(settings)
        say(console, again.headline())
    finally:
        say(console, "Stopping the servers ...")
        sandbox.stop()
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _db(db) -> dict:
    return {"host": db.host, "port": db.port, "user": db.user, "database": db.database}


def _s3(s3) -> dict:
    return {"endpoint": s3.endpoint, "provider": s3.provider.value, "access_key": s3.access_key.get_secret_value(), "bucket": s3.bucket}
