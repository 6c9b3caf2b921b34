"""Checks before any byte moves. Reads both sides, writes nothing (a multipart upload with one small
part, aborted at once, proves the destination accepts writes and shows its ETags; no object
appears), and either returns what the migration needs to know or raises one
:class:`PreflightError` listing every problem found, each naming what to fix."""

from __future__ import annotations

import base64
import hashlib
from contextlib import AsyncExitStack
from typing import Any, Literal, NamedTuple

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import alembic_revision, open_engine
from .drift import check_drift
from .errors import PreflightError
from .locks import ProjectLocks
from .marks import COPY_MARK
from .buckets import abort_upload, abort_uploads, etag_of, list_prefix
from .copier import stored_checksum
from .plan import DestinationFacts
from .s3 import CHECKSUM_MISMATCH, Retrier, error_code, explain_bucket_error, s3_client
from .schema import ColumnDiff
from .selection import Selection, creation_dates, select_projects
from .settings import MigrationSettings, S3Settings, UuidPolicy

PROBE_KEY = ".projmig-preflight"
PROBE_MARK = "preflight probe"  # the write probe's upload carries projmig's mark like everything it writes


METHODS = {
    "etag": "ETags (MD5s on both sides)",
    "checksum": "the source's stored S3 checksums, validated by the destination on receipt (objects without one, "
    "and objects copied in parts: SHA-256 of the bytes read back)",
    "sha256": "SHA-256 of the bytes read back",
}


class VerificationProbe(BaseModel):
    """What each side's probe saw (None: not probed), and the method chosen."""

    source_md5_etags: bool | None = None
    destination_md5_etags: bool | None = None
    destination_checksums: bool | None = None  # refuses a wrong checksum of each algorithm, keeps a right one
    method: Literal["etag", "checksum", "sha256"] = "etag"
    notes: list[str] = Field(default_factory=list)  # what each probe saw, in words

    def describe(self) -> str:
        return f"verification: {METHODS[self.method]}" + (f" ({'; '.join(self.notes)})" if self.notes else "")


class PreflightReport(BaseModel):
    source_revision: str | None
    destination_revision: str | None
    selection: Selection  # the projects and their destination ids (projmig/selection.py)
    already_migrated: list[str] = Field(default_factory=list)  # in the destination from an earlier run
    facts: DestinationFacts
    products: dict[str, int | None] = Field(default_factory=dict)  # destination product -> its group
    schema_drift: list[dict[str, Any]] = Field(default_factory=list)
    drift_notes: list[str] = Field(default_factory=list)  # each column dropped or defaulted, in words
    verification: VerificationProbe = Field(default_factory=VerificationProbe)

    @property
    def resume(self) -> bool:
        return bool(self.already_migrated)

    @property
    def probe_key(self) -> str:
        """The destination key of the write probe: an upload opened and aborted at once (ours)."""
        roots = self.selection.roots
        return f"{roots[0]}/{PROBE_KEY}" if roots else PROBE_KEY


async def run_preflight(
    settings: MigrationSettings, *, probe_write: bool = True, locks: ProjectLocks | None = None
) -> PreflightReport:
    """``locks``: the run's locks (:mod:`projmig.locks`): once the destination projects are known, and
    before they are looked for in the destination, they are locked (waiting for another run of them)."""
    quick = Retrier(attempts=2, timeout=20, initial_wait=0.5, max_wait=2)
    async with AsyncExitStack() as stack:
        engines: dict[str, AsyncEngine] = {}
        problems: list[str] = []
        for role, db in (("source", settings.source.db), ("destination", settings.destination.db)):
            try:
                engines[role] = await stack.enter_async_context(open_engine(db, role))
            except PreflightError as exc:
                problems += exc.problems
        for role, s3 in (("source", settings.source.s3), ("destination", settings.destination.s3)):
            problems += (await check_bucket(role, s3, quick, listing=True, write_probe_key=None)).problems
        if problems:
            raise PreflightError(problems)

        try:
            async with engines["source"].connect() as src, engines["destination"].connect() as dst:
                try:
                    report = await _check_databases(settings, src, dst, problems, locks)
                except Exception as exc:
                    if not _connection_lost(exc):
                        raise
                    lost = [r for r, c in (("source", src), ("destination", dst)) if c.invalidated]
                    raise _lost(settings, lost, exc) from exc
        except Exception as exc:
            if isinstance(exc, PreflightError) or not _connection_lost(exc):
                raise
            raise _lost(settings, [], exc) from exc
        if problems:
            raise PreflightError(problems)
        if probe_write:
            # the only write of the preflight, and only once everything else is right; from here on
            # the calls move bytes: retried like every S3 call of the migration
            report.verification = await probe_verification(settings, report, Retrier.of(settings.options), problems)
            if problems:
                raise PreflightError(problems)
        return report


PROBE_BODY = b"projmig preflight: are this server's ETags MD5s of the bytes?\n"
SMALL_PROBE = 16 * 1024 * 1024  # the largest source object read whole to see what its ETag is


async def probe_verification(
    settings: MigrationSettings, report: PreflightReport, retry: Retrier, problems: list[str]
) -> VerificationProbe:
    """Whether each side's ETags are the MD5 of the bytes (SSE-KMS and SSE-C objects on AWS have
    other ETags): the source's smallest single-part object of the first project is read whole; in
    the destination, the write probe's upload takes one small part (no object appears), after parts
    with a wrong checksum of each of S3's algorithms (refused: the destination validates them).
    etag where both sides' ETags are MD5s, else checksum where the destination validates and keeps
    checksums, else sha256. A chosen method that cannot work is a problem naming the provider and
    the object (under etag, copying would find every object differing from its source, and delete it
    again)."""
    probe = VerificationProbe()
    src, dst = settings.source.s3, settings.destination.s3
    written = await check_bucket("destination", dst, retry, listing=False, write_probe_key=report.probe_key)
    if written.problems:
        problems += written.problems
        return probe
    probe.destination_md5_etags = written.md5_etag
    probe.destination_checksums = written.checksums
    probe.notes.append(f"destination ({dst.provider}): ETags {'are' if written.md5_etag else 'are not'} MD5s, "
                       f"S3 checksums {'validated and kept' if written.checksums else 'not validated'}")
    destination_what = f"destination bucket {dst.describe()} (provider {dst.provider}): a part of probe upload {report.probe_key}"
    source_what = ""
    async with s3_client(src) as client:
        roots = report.selection.roots
        listed = await list_prefix(client, src.bucket, f"{roots[0]}/", retry) if roots else {}
        small = sorted((s.size, k) for k, s in listed.items() if 0 < s.size <= SMALL_PROBE and "-" not in s.etag)
        if small:
            key = small[0][1]

            async def read() -> tuple[dict[str, Any], bytes]:
                resp = await client.get_object(Bucket=src.bucket, Key=key, ChecksumMode="ENABLED")
                async with resp["Body"] as body:
                    return resp, await body.read()

            resp, data = await retry(f"source bucket {src.describe()}: read {key}", read)
            probe.source_md5_etags = hashlib.md5(data).hexdigest() == etag_of(resp["ETag"])
            stored = stored_checksum(resp)
            probe.notes.append(
                f"source ({src.provider}) object {key}: ETag {'is' if probe.source_md5_etags else 'is not'} its MD5, "
                + (f"stored {stored[0]} checksum" if stored else "no stored checksum")
            )
            source_what = f"source bucket {src.describe()} (provider {src.provider}): object {key}"
    md5s = probe.source_md5_etags is not False and probe.destination_md5_etags
    probe.method = "etag" if md5s else "checksum" if probe.destination_checksums else "sha256"
    wanted = settings.options.verification
    if wanted == "etag" and not md5s:
        where = destination_what if not probe.destination_md5_etags else source_what
        problems.append(
            f"options.verification=etag cannot work: {where}: its ETag is not the MD5 of its bytes (SSE-KMS or "
            "SSE-C?): use verification auto, checksum or sha256"
        )
    elif wanted == "checksum" and not probe.destination_checksums:
        problems.append(
            f"options.verification=checksum cannot work: {destination_what}: a part with a wrong S3 checksum was "
            "taken, or a right one not kept (the server ignores S3's additional checksums, e.g. Ceph 16.2): use "
            "verification auto or sha256"
        )
    elif wanted in ("checksum", "sha256"):
        probe.method = wanted
    return probe


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, TimeoutError)) or isinstance(exc, DBAPIError) and exc.connection_invalidated


def _lost(settings: MigrationSettings, roles: list[str], exc: BaseException) -> PreflightError:
    """A database connection lost during the checks: one line per database, not a traceback."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    detail = (str(cause).splitlines() or [type(cause).__name__])[0]
    return PreflightError([
        f"{role} database {getattr(settings, role).db.describe()}: connection lost during the checks ({detail}); "
        "nothing was written" for role in roles or ["source", "destination"]
    ])


class BucketCheck(NamedTuple):
    problems: list[str]
    md5_etag: bool | None = None  # the write probe's part came back with the MD5 of its bytes as ETag
    checksums: bool | None = None  # the server refused wrong S3 checksums and kept a right one


async def check_bucket(
    role: str, s3: S3Settings, retry: Retrier, *, listing: bool, write_probe_key: str | None
) -> BucketCheck:
    """Whether the bucket can be read (``listing``) and written: the write probe opens a multipart
    upload at ``write_probe_key``, uploads small parts (:func:`_probe_checksums`; then one whose
    ETag tells whether the server's ETags are MD5s) and aborts the upload, so no object ever appears."""
    where = f"{role} bucket {s3.describe()}"
    md5_etag = checksums = None
    try:
        async with s3_client(s3, connect_timeout=5) as client:
            if listing:
                await retry(f"{where}: head", lambda: client.head_bucket(Bucket=s3.bucket))
                await retry(f"{where}: list", lambda: client.list_objects_v2(Bucket=s3.bucket, MaxKeys=1))
            if write_probe_key:
                # a run killed before its abort below left its probe open: abort it first
                await abort_uploads(client, s3.bucket, write_probe_key, retry, keys={write_probe_key})
                upload = await retry(
                    f"{where}: write",
                    lambda: client.create_multipart_upload(
                        Bucket=s3.bucket, Key=write_probe_key, Metadata={COPY_MARK: PROBE_MARK}
                    ),
                )
                try:
                    validated = await _refuses_wrong_checksums(client, s3.bucket, write_probe_key, upload["UploadId"], retry, where)
                    right = {"ChecksumSHA256": base64.b64encode(hashlib.sha256(PROBE_BODY).digest()).decode()} if validated else {}
                    part = await retry(
                        f"{where}: write a part",
                        lambda: client.upload_part(
                            Bucket=s3.bucket, Key=write_probe_key, UploadId=upload["UploadId"], PartNumber=1,
                            Body=PROBE_BODY, **right,
                        ),
                    )
                    md5_etag = etag_of(part["ETag"]) == hashlib.md5(PROBE_BODY).hexdigest()
                    checksums = validated and part.get("ChecksumSHA256") == right["ChecksumSHA256"]
                finally:
                    await abort_upload(client, s3.bucket, write_probe_key, upload["UploadId"], retry)
    except Exception as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        action = "cannot write" if write_probe_key else "cannot read"
        return BucketCheck([f"{where}: {action}: {explain_bucket_error(cause)}"])
    return BucketCheck([], md5_etag, checksums)


CHECKSUM_BYTES = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}  # each algorithm's value


async def _refuses_wrong_checksums(client: Any, bucket: str, key: str, upload_id: str, retry: Retrier, where: str) -> bool:
    """Whether the server refuses a part whose S3 checksum is wrong, for each of S3's algorithms
    (a source object may carry any of them). A part taken (Ceph 16.2 ignores checksums) or refused
    for another reason (an algorithm the server does not know) ends the probe: checksums are not used."""
    for name, size in CHECKSUM_BYTES.items():
        wrong = base64.b64encode(bytes(size)).decode()  # the checksum of no bytes (CRC), or none at all
        try:
            await retry(
                f"{where}: write a part with a wrong {name} checksum",
                lambda: client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=PROBE_BODY, **{f"Checksum{name}": wrong}
                ),
            )
        except ClientError as exc:
            if error_code(exc) in CHECKSUM_MISMATCH:
                continue
            return False
        return False
    return True


async def _check_databases(
    settings: MigrationSettings, src: AsyncConnection, dst: AsyncConnection, problems: list[str],
    locks: ProjectLocks | None = None,
) -> PreflightReport:
    src_rev, dst_rev = await alembic_revision(src), await alembic_revision(dst)
    drift: list[ColumnDiff] = []
    drift_notes: list[str] = []
    drifting = False
    if src_rev is None or dst_rev is None:
        missing = [r for r, v in (("source", src_rev), ("destination", dst_rev)) if v is None]
        problems.append(f"{' and '.join(missing)} database has no alembic_version: is it an osparc-simcore database?")
    elif src_rev != dst_rev:
        if not settings.options.allow_schema_drift:
            problems.append(
                f"schema revision mismatch: source is at {src_rev}, destination at {dst_rev} "
                "(upgrade one side, or set options.allow_schema_drift to migrate where the columns allow it)"
            )
        else:
            drifting = True  # columns compared, and the rows to move checked, once they are known

    # what to move, and under which ids
    selection = await select_projects(settings, src, dst, problems)
    projects = selection.projects
    if drifting and projects:
        checked = await check_drift(src, dst, projects, revisions=(src_rev or "", dst_rev or ""))
        problems += checked.problems
        drift, drift_notes = checked.diffs, checked.notes

    # who receives it
    facts, products = await _destination_facts(settings, src, dst, projects, problems)

    if locks is not None and projects and not problems:
        # one run of these projects at a time from here on; what another run inserted while this
        # one waited is seen below (no transaction is kept open while waiting)
        await src.rollback()  # read-only so far: ended, not kept open while waiting
        await dst.rollback()
        await locks.acquire(selection.destination_uuids)

    # collisions: the same uuid or file_id for something that is not this project
    already: list[str] = []
    if settings.options.uuid_policy == UuidPolicy.KEEP and projects:
        existing = await creation_dates(dst, projects)
        for uuid, (created, name) in existing.items():
            if created == selection.created[uuid]:
                already.append(uuid)
            else:
                problems.append(
                    f"collision: the destination already has a different project {uuid} ({name!r}, created "
                    f"{created:%Y-%m-%d %H:%M}): use options.uuid_policy=new to copy it under new ids"
                )
        file_ids = [r[0] for r in await src.execute(
            text("SELECT file_id FROM file_meta_data WHERE project_id = ANY(:p)"), {"p": projects}
        )]
        if file_ids:
            clashes = (await dst.execute(
                text("SELECT file_id, project_id FROM file_meta_data WHERE file_id = ANY(:f) "
                     "AND (project_id IS NULL OR NOT project_id = ANY(:ours)) ORDER BY file_id LIMIT 6"),
                {"f": file_ids, "ours": already or [""]},
            )).all()
            for file_id, owner in clashes[:5]:
                problems.append(f"collision: destination file_id {file_id} already belongs to project {owner}")
            if len(clashes) > 5:
                problems.append("collision: more destination file_ids clash")
    if selection.new_uuids:
        already = await _earlier_copies(dst, selection, problems)

    return PreflightReport(
        source_revision=src_rev,
        destination_revision=dst_rev,
        selection=selection,
        already_migrated=already,
        facts=facts,
        products=products,
        schema_drift=[d.__dict__ for d in drift if not d.identical],
        drift_notes=drift_notes,
    )


async def _earlier_copies(dst: AsyncConnection, selection: Selection, problems: list[str]) -> list[str]:
    """The new ids must be free, or hold this same copy from an earlier run (resume)."""
    already: list[str] = []
    new_uuids = selection.new_uuids
    existing = await creation_dates(dst, list(new_uuids.values()))
    for src_uuid, dst_uuid in new_uuids.items():
        if dst_uuid not in existing:
            continue
        created, name = existing[dst_uuid]
        if created == selection.created[src_uuid]:
            already.append(dst_uuid)
        else:
            problems.append(
                f"collision: the destination has a project {dst_uuid} ({name!r}) that is not the copy of {src_uuid}: "
                "choose another options.copy_label"
            )
    clashes = (await dst.execute(
        text("SELECT file_id, project_id FROM file_meta_data WHERE split_part(file_id, '/', 1) = ANY(:new) "
             "AND (project_id IS NULL OR project_id <> split_part(file_id, '/', 1)) ORDER BY file_id LIMIT 6"),
        {"new": list(new_uuids.values())},
    )).all()
    for file_id, owner in clashes[:5]:
        problems.append(f"collision: destination file_id {file_id} already belongs to project {owner}")
    return already


async def _destination_facts(
    settings: MigrationSettings, src: AsyncConnection, dst: AsyncConnection, projects: list[str], problems: list[str]
) -> tuple[DestinationFacts, dict[str, int | None]]:
    dest = settings.destination
    owner = (await dst.execute(text("SELECT id, primary_gid FROM users WHERE id = :u"), {"u": dest.user_id})).first()
    owner_gid = 0
    if owner is None:
        problems.append(f"destination user {dest.user_id} does not exist (destination.user_id)")
    elif owner.primary_gid is None:
        problems.append(f"destination user {dest.user_id} has no primary group")
    else:
        owner_gid = owner.primary_gid
        if dest.user_gid is not None and dest.user_gid != owner_gid:
            problems.append(
                f"destination.user_gid {dest.user_gid} is not the primary group of user {dest.user_id} ({owner_gid})"
            )
    if dest.product_name:
        wanted = {dest.product_name}
    else:
        wanted = {r[0] for r in await src.execute(
            text("SELECT DISTINCT product_name FROM projects WHERE uuid = ANY(:p)"), {"p": projects}
        )}
    products = dict((await dst.execute(
        text("SELECT name, group_id FROM products WHERE name = ANY(:n)"), {"n": list(wanted)}
    )).all())
    for name in sorted(wanted - products.keys()):
        source = "destination.product_name" if dest.product_name else "the source project's product; set destination.product_name"
        problems.append(f"destination product {name!r} does not exist ({source})")
    everyone = await dst.scalar(text("SELECT gid FROM groups WHERE type = 'EVERYONE' LIMIT 1"))
    facts = DestinationFacts(
        owner_id=dest.user_id,
        owner_gid=owner_gid,
        everyone_gid=everyone,
        product_name=dest.product_name,
        product_gids=products,
        bucket=dest.s3.bucket,
    )
    return facts, products
