"""Build a realistic study in a source deployment: rows that satisfy every FK and trigger, and objects.

Used by the tests, ``bench/`` and ``projmig demo``. A study gets nodes linked to each other, files
of chosen sizes (keys with spaces, unicode, ``+``, ``%``, ``#``), a directory entry with several
objects, a soft link, a multipart object uploaded with a non-default part size, hidden child job
projects (recursively linked through ``projects_metadata``) and rows in deployment-bound tables
(folder, wallet, tag, workspace) that a migration must not copy.

It builds large studies too (the bench's 100,000 objects): objects are PUT by a fixed pool of
workers over the lean data path (:mod:`projmig.s3data`, ~0.3 ms of client CPU a request instead of
botocore's ~2 ms) and the ``file_meta_data`` rows go in with one ``COPY``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import asyncpg

from ..s3 import s3_client
from ..s3data import DataPath, data_path
from ..settings import DatabaseSettings, S3Settings
from .simcore import asyncpg_dsn

KiB = 1024
MiB = 1024 * KiB

SPECIAL_NAMES = ["my file.txt", "résumé ü.dat", "a+b=c.bin", "100% done.txt", "hash#tag.csv", "empty.txt"]


@dataclass
class SampleSpec:
    nodes: int = 5
    files: int = 27  # regular files (with the multipart one, the directory and the link: 30 entries)
    file_size: int = 64 * KiB  # largest regular file; sizes spread from 1 KiB (one is 0 bytes)
    exact_file_size: bool = False  # every regular file exactly file_size (benchmarks)
    log_file_sizes: bool = False  # sizes log-uniform from 1 KiB to file_size: many small, a few large
    directory_objects: int = 10  # objects per directory entry
    directory_object_size: int = 8 * KiB
    directories: int = 1  # directory entries (when directory_objects > 0)
    soft_link: bool = True
    multipart_size: int = 40 * MiB  # 0: none
    multipart_part_size: int = 6 * MiB  # not a client default, so the layout must be reproduced
    hidden_children: int = 2
    child_files: int = 2
    deployment_bound_rows: bool = True
    special_names: bool = True
    share_with_gids: list[int] = field(default_factory=list)
    seed: int = 0
    name: str = "Sample study"


@dataclass
class SampleProject:
    uuid: str
    node_ids: list[str]
    children: list[str]
    file_ids: list[str]
    objects: dict[str, int]  # every S3 key of the graph -> size

    @property
    def all_projects(self) -> list[str]:
        return [self.uuid, *self.children]

    @property
    def total_bytes(self) -> int:
        return sum(self.objects.values())


class Uploader:
    """PUTs objects: ``concurrency`` at once, bodies made when sent (never all in memory)."""

    UPLOAD_CONCURRENCY = 32

    def __init__(self, client, data: DataPath, bucket: str, concurrency: int = UPLOAD_CONCURRENCY):
        self.client = client
        self.data = data
        self.bucket = bucket
        self.slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.etags: dict[str, str] = {}

    async def put(self, key: str, size: int) -> str:
        async with self.slots:
            resp = await self.data.put(self.bucket, key, os.urandom(size))
        self.etags[key] = resp["ETag"].strip('"')
        return self.etags[key]

    async def put_many(self, objects: list[tuple[str, int]]) -> None:
        """Many small objects through a fixed pool of workers (not one task per object)."""
        pending = iter(objects)

        async def worker() -> None:
            for key, size in pending:  # the workers share one iterator: each object is taken once
                await self.put(key, size)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(objects)))))

    async def put_multipart(self, key: str, size: int, part_size: int) -> str:
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        count = -(-size // part_size)

        async def part(number: int) -> dict:
            length = min(part_size, size - (number - 1) * part_size)
            async with self.slots:
                resp = await self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number,
                    Body=os.urandom(length),
                )
            return {"PartNumber": number, "ETag": resp["ETag"]}

        parts = []
        for first in range(1, count + 1, 4):  # four parts in memory at a time
            parts += await asyncio.gather(*(part(n) for n in range(first, min(first + 4, count + 1))))
        resp = await self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )
        self.etags[key] = resp["ETag"].strip('"')
        return self.etags[key]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


async def build_sample_project(
    db: DatabaseSettings,
    s3: S3Settings,
    *,
    owner_id: int,
    product: str = "osparc",
    spec: SampleSpec | None = None,
) -> SampleProject:
    spec = spec or SampleSpec()
    rng = random.Random(spec.seed)
    now = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None) - timedelta(days=30)
    conn = await asyncpg.connect(asyncpg_dsn(db))
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    try:
        async with s3_client(s3) as client, data_path(s3, client, max_connections=Uploader.UPLOAD_CONCURRENCY) as data:
            up = Uploader(client, data, s3.bucket)
            project = _uuid(rng)
            children = [_uuid(rng) for _ in range(spec.hidden_children)]
            result = SampleProject(uuid=project, node_ids=[], children=children, file_ids=[], objects={})
            async with conn.transaction():
                nodes = await insert_project(conn, up, result, project, spec, rng, owner_id, product, now, parent=None)
                result.node_ids = nodes
                parent = (project, nodes[0])
                for index, child in enumerate(children):
                    child_spec = SampleSpec(
                        nodes=1, files=spec.child_files, file_size=min(spec.file_size, 16 * KiB), directory_objects=0,
                        soft_link=False, multipart_size=0, hidden_children=0, deployment_bound_rows=False,
                        special_names=False, seed=spec.seed * 1000 + index + 1, name=f"{spec.name} job {index}",
                    )
                    child_nodes = await insert_project(
                        conn, up, result, child, child_spec, rng, owner_id, product, now,
                        parent=parent, root=(project, nodes[0]),
                    )
                    parent = (child, child_nodes[0])  # the next job is a child of this one: recursion
                if spec.deployment_bound_rows:
                    await _insert_deployment_bound_rows(conn, project, owner_id, product)
            return result
    finally:
        await conn.close()


async def insert_project(
    conn: asyncpg.Connection, up: Uploader, result: SampleProject, project: str, spec: SampleSpec,
    rng: random.Random, owner_id: int, product: str, now: datetime,
    parent: tuple[str, str] | None, root: tuple[str, str] | None = None,
) -> list[str]:
    nodes = [_uuid(rng) for _ in range(spec.nodes)]
    hidden = parent is not None
    ui = {"workbench": {n: {"position": {"x": 100 * i, "y": 50}} for i, n in enumerate(nodes)}, "mode": "workbench"}
    await conn.execute(
        """INSERT INTO projects (type, uuid, name, description, thumbnail, prj_owner, creation_date,
               last_change_date, published, hidden, ui, dev, quality, classifiers, product_name)
           VALUES ('STANDARD', $1, $2, 'built by projmig.sandbox', '', $3, $4, $5, false, $6, $7, '{}', '{}', '{}', $8)""",
        project, spec.name, owner_id, now, now + timedelta(days=1), hidden, ui, product,
    )
    for gid in spec.share_with_gids:
        await conn.execute(
            "INSERT INTO project_to_groups (project_uuid, gid, read, write, delete) VALUES ($1, $2, true, false, false)",
            project, gid,
        )

    # files first: node outputs point at them
    uploads = []
    rows: list[dict] = []
    node_outputs: dict[str, dict] = {n: {} for n in nodes}

    def file_row(node: str, path: str, size: int, **extra) -> dict:
        file_id = f"{project}/{node}/{path}"
        row = {"file_id": file_id, "object_name": file_id, "node_id": node, "file_size": size,
               "is_soft_link": False, "is_directory": False, **extra}
        rows.append(row)
        return row

    for i in range(spec.files):
        node = nodes[i % len(nodes)]
        if spec.special_names and i < len(SPECIAL_NAMES):
            name = SPECIAL_NAMES[i]
        else:
            name = f"data_{i}.bin"
        if spec.exact_file_size:
            size = spec.file_size
        elif name == "empty.txt":
            size = 0
        elif spec.log_file_sizes:
            size = int(math.exp(rng.uniform(math.log(KiB), math.log(max(KiB, spec.file_size)))))
        else:
            size = rng.randint(KiB, max(KiB, spec.file_size))
        row = file_row(node, f"outputs/output_{i}/{name}", size)
        uploads.append(("put", row, size))
        node_outputs[node].setdefault(f"output_{i}", {"store": 0, "path": row["file_id"]})
    if spec.multipart_size:
        node = nodes[-1]
        row = file_row(node, "outputs/big/large result.h5", spec.multipart_size)
        uploads.append(("multipart", row, spec.multipart_size))
        node_outputs[node]["big"] = {"store": 0, "path": row["file_id"]}
    if spec.directory_objects:
        for d in range(spec.directories):
            node = nodes[d % len(nodes)]
            total = spec.directory_objects * spec.directory_object_size
            name = "workspace" if d == 0 else f"workspace_{d}"
            row = file_row(node, f"outputs/{name}", total, is_directory=True, entity_tag=None)
            for j in range(spec.directory_objects):
                key = f"{row['file_id']}/sub{j % 3}/part_{j}.dat"
                uploads.append(("put", {"file_id": key, "object_name": key, "directory_member": True}, spec.directory_object_size))
            node_outputs[node].setdefault(name, {"store": 0, "path": row["file_id"]})

    await up.put_many([(row["object_name"], size) for kind, row, size in uploads if kind == "put"])
    for kind, row, size in uploads:
        if kind == "multipart":
            await up.put_multipart(row["object_name"], size, spec.multipart_part_size)
        result.objects[row["object_name"]] = size
        if not row.get("directory_member"):
            row["entity_tag"] = up.etags[row["object_name"]]

    if spec.soft_link and spec.files:
        target = rows[0]
        link = file_row(nodes[1 % len(nodes)], "inputs/link_to_first.txt", target["file_size"],
                        is_soft_link=True, entity_tag=target["entity_tag"])
        link["object_name"] = target["object_name"]

    for i, node in enumerate(nodes):
        inputs = {"in_1": {"nodeUuid": nodes[i - 1], "output": next(iter(node_outputs[nodes[i - 1]]), "out_1")}} if i else {}
        await conn.execute(
            """INSERT INTO projects_nodes (node_id, project_uuid, key, version, label, inputs, input_nodes,
                   outputs, state, ui, required_resources, created, modified)
               VALUES ($1, $2, $3, '1.0.0', $4, $5, $6, $7, $8, $9, $10, $11, $11)""",
            node, project, f"simcore/services/comp/sample-{i}", f"node {i}", inputs,
            [nodes[i - 1]] if i else [], node_outputs[node], {"currentStatus": "SUCCESS"},
            {"position": {"x": 100 * i, "y": 50}}, {}, now.replace(tzinfo=timezone.utc),
        )
    # projects_nodes' trigger touched last_change_date: put the study's own date back
    await conn.execute("UPDATE projects SET last_change_date = $2 WHERE uuid = $1", project, now + timedelta(days=1))

    created = now.replace(tzinfo=timezone.utc)
    await conn.copy_records_to_table(
        "file_meta_data",
        columns=["location_id", "location", "bucket_name", "object_name", "project_id", "node_id", "user_id",
                 "created_at", "file_id", "file_size", "last_modified", "entity_tag", "is_soft_link", "is_directory",
                 "sha256_checksum"],
        records=[
            ("0", "simcore.s3", up.bucket, row["object_name"], project, row["node_id"], owner_id, created,
             row["file_id"], row["file_size"], created, row.get("entity_tag"), row["is_soft_link"], row["is_directory"],
             None)
            for row in rows
        ],
    )
    result.file_ids += [row["file_id"] for row in rows]

    await conn.execute(
        "INSERT INTO projects_metadata (project_uuid, custom, parent_project_uuid, parent_node_id, "
        "root_parent_project_uuid, root_parent_node_id) VALUES ($1, $2, $3, $4, $5, $6)",
        project, {"study": spec.name, "checksum": hashlib.sha1(project.encode()).hexdigest()[:8]},
        parent[0] if parent else None, parent[1] if parent else None,
        (root or parent or (None, None))[0], (root or parent or (None, None))[1],
    )
    await conn.execute("INSERT INTO projects_extensions (project_uuid, allow_guests_to_push_states_and_output_ports) VALUES ($1, true)", project)
    await conn.execute(
        "INSERT INTO projects_networks (project_uuid, networks_with_aliases) VALUES ($1, $2)",
        project, {f"network-{project[:8]}": {n: f"node-{i}" for i, n in enumerate(nodes)}},
    )
    if parent is not None:
        await conn.execute(
            "INSERT INTO projects_to_jobs (project_uuid, job_parent_resource_name, storage_assets_deleted) VALUES ($1, $2, false)",
            project, f"solvers/simcore%2Fservices%2Fcomp%2Fsleeper/releases/2.0.0/jobs/{project}",
        )
    return nodes


async def _insert_deployment_bound_rows(conn: asyncpg.Connection, project: str, owner_id: int, product: str) -> None:
    gid = await conn.fetchval("SELECT primary_gid FROM users WHERE id = $1", owner_id)
    workspace = await conn.fetchval(
        "INSERT INTO workspaces (name, owner_primary_gid, product_name) VALUES ('team space', $1, $2) RETURNING workspace_id",
        gid, product,
    )
    await conn.execute("UPDATE projects SET workspace_id = $2 WHERE uuid = $1", project, workspace)
    folder = await conn.fetchval(
        "INSERT INTO folders_v2 (name, product_name, user_id, created_by_gid) VALUES ('my folder', $1, $2, $3) RETURNING folder_id",
        product, owner_id, gid,
    )
    await conn.execute("INSERT INTO projects_to_folders (project_uuid, folder_id, user_id) VALUES ($1, $2, $3)", project, folder, owner_id)
    wallet = await conn.fetchval(
        "INSERT INTO wallets (name, owner, status, product_name) VALUES ('credits', $1, 'ACTIVE', $2) RETURNING wallet_id",
        gid, product,
    )
    await conn.execute("INSERT INTO projects_to_wallet (project_uuid, wallet_id) VALUES ($1, $2)", project, wallet)
    tag = await conn.fetchval("INSERT INTO tags (name, color) VALUES ('important', '#ff0000') RETURNING id")
    project_id = await conn.fetchval("SELECT id FROM projects WHERE uuid = $1", project)
    await conn.execute(
        "INSERT INTO projects_tags (project_id, tag_id, project_uuid_for_rut) VALUES ($1, $2, $3)", project_id, tag, project
    )
