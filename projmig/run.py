"""One run's shared resources, handed to every step: :class:`MigrationRun`.

A run (of ``migrate``, ``plan``, ``verify``, ``cleanup`` or ``rollback``) opens them once: the S3
clients and data paths of both sides with the copy limits shared by all of its copies
(:class:`Transfers`: objects in flight, bytes held in memory), the retrier of its S3 calls, and, when
it writes, the destination projects' locks (:mod:`projmig.locks`). Every step takes the run as its
first argument; nothing about a run lives in module state, so a step's signature says what it uses.

A Prefect task gets the run as a parameter outside its cache key (``flows/tasks.py``). A copy task
run on a Dask worker, in another process, opens :class:`Transfers` of its own from the two S3
sections and the options it is given (:class:`TransferSettings`): nothing of the databases.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from aiobotocore.session import AioSession
from pydantic import BaseModel, ConfigDict

from .budget import ByteBudget
from .buckets import ObjectState
from .copier import CopyOutcome, ObjectCopier
from .locks import ProjectLocks, project_locks
from .plan import ObjectCopy
from .s3 import Retrier, new_session, s3_client
from .releases import OsparcMigrations
from .s3data import DataPath, data_path
from .schema import Reflections
from .settings import DatabaseSettings, MigrationOptions, MigrationSettings, S3Settings
from .staging import StagedDatabase, StagingServer, staging_database

Verification = str  # MigrationOptions.verification's values


class TransferSettings(BaseModel):
    """What copying needs: both buckets (with their credentials) and the options."""

    model_config = ConfigDict(frozen=True)

    source: S3Settings
    destination: S3Settings
    options: MigrationOptions

    @classmethod
    def of(cls, settings: MigrationSettings) -> TransferSettings:
        return cls(source=settings.source.s3, destination=settings.destination.s3, options=settings.options)


class Side:
    """One side's bucket: its settings, an aiobotocore client, and the data path that moves bytes."""

    def __init__(self, s3: S3Settings, client: Any, data: DataPath):
        self.s3, self.client, self.data = s3, client, data

    @property
    def bucket(self) -> str:
        return self.s3.bucket


class Transfers:
    """Both sides' clients and the limits of every copy of a run: ``copy_concurrency`` objects (or
    parts) in flight and ``memory_limit`` bytes held, across all copy task runs at once, so that a
    batch that finishes late gets every free slot instead of a share fixed in advance."""

    def __init__(self, settings: TransferSettings, source: Side, destination: Side, session: AioSession):
        self.settings = settings
        self.source, self.destination = source, destination
        self.session = session  # whose clients these are (the run's other clients come from it too)
        self.retry = Retrier.of(settings.options)
        self.slots = asyncio.Semaphore(settings.options.copy_concurrency)
        self.budget = ByteBudget(settings.options.memory_limit)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: TransferSettings) -> AsyncIterator[Transfers]:
        opts = settings.options
        lean = opts.s3_data_client == "lean"
        pool = max(opts.copy_concurrency, opts.part_concurrency) + 4
        session = new_session()
        async with AsyncExitStack() as stack:
            sides = []
            for s3 in (settings.source, settings.destination):
                client = await stack.enter_async_context(s3_client(s3, session=session, max_connections=pool))
                data = await stack.enter_async_context(data_path(s3, client, lean=lean, max_connections=pool))
                sides.append(Side(s3, client, data))
            yield cls(settings, *sides, session)

    def use_verification(self, method: Verification) -> None:
        options = self.settings.options.model_copy(update={"verification": method})
        self.settings = self.settings.model_copy(update={"options": options})

    def copier(self, on_bytes: Callable[[int], None] | None = None) -> ObjectCopier:
        opts = self.settings.options
        return ObjectCopier(
            self.source.client,
            self.destination.client,
            self.source.bucket,
            self.destination.bucket,
            retry=self.retry,
            server_side=self.settings.source.same_endpoint_as(self.settings.destination),
            multipart_threshold=opts.multipart_threshold,
            multipart_chunksize=opts.multipart_chunksize,
            part_concurrency=opts.part_concurrency,
            on_bytes=on_bytes,
            src_data=self.source.data,
            dst_data=self.destination.data,
            verification=opts.verification if opts.verification in ("checksum", "sha256") else "etag",
            concurrency=opts.copy_concurrency,
            slots=self.slots,
            budget=self.budget,
        )

    async def copy(
        self, items: list[tuple[ObjectCopy, ObjectState | None]], on_bytes: Callable[[int], None] | None = None
    ) -> list[CopyOutcome]:
        return await self.copier(on_bytes).copy_all(items)


class MigrationRun:
    """A run: its settings (credentials resolved), its :class:`Transfers`, its project locks (None for a
    run that writes nothing) and, across osparc releases, its staging database. Open it with :meth:`open`."""

    def __init__(
        self, settings: MigrationSettings, transfers: Transfers, locks: ProjectLocks | None, resources: AsyncExitStack,
    ):
        self.settings = settings
        self.transfers = transfers
        self.locks = locks
        self.staged: StagedDatabase | None = None
        self.reflections = Reflections()  # of both databases' tables, one per shape
        self._resources = resources  # what the run opens as it goes, closed when it ends

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: MigrationSettings, *, lock: bool = True) -> AsyncIterator[MigrationRun]:
        """``lock``: the run writes, so it locks the destination projects it works on, from its
        preflight until it ends (one run of a project at a time: :mod:`projmig.locks`)."""
        async with AsyncExitStack() as stack:
            transfers = await stack.enter_async_context(Transfers.open(TransferSettings.of(settings)))
            locks = None
            if lock:
                locks = await stack.enter_async_context(
                    project_locks(settings.destination.db, settings.options.lock_wait)
                )
            yield cls(settings, transfers, locks, stack)

    @property
    def rows_db(self) -> DatabaseSettings:
        """Where the run reads its projects' rows: the source, or (across osparc releases) its staging
        database, at the destination's revision."""
        return self.staged.db if self.staged is not None else self.settings.source.db

    async def stage(self, projects: Sequence[str], migrations: OsparcMigrations, revision: str) -> StagedDatabase:
        """The projects' rows in a staging database brought to ``revision`` by osparc's migrations
        (:mod:`projmig.staging`), kept until the run ends; made once per run."""
        if self.staged is not None:
            if set(projects) - self.staged.projects or self.staged.revision != revision:
                raise AssertionError("a run stages one selection, once")  # pragma: no cover
            return self.staged
        host = self.settings.host
        server = None
        if host.staging_db is not None:
            server = await self._resources.enter_async_context(StagingServer.at(host.staging_db))
        self.staged = await self._resources.enter_async_context(
            staging_database(self.settings.source.db, projects, migrations, revision, server=server)
        )
        return self.staged

    @property
    def retry(self) -> Retrier:
        return self.transfers.retry

    @property
    def source(self) -> Side:
        return self.transfers.source

    @property
    def destination(self) -> Side:
        return self.transfers.destination

    def use_verification(self, method: Verification) -> None:
        """What the preflight's probes chose for ``verification=auto``, for every copy of this run."""
        self.settings = self.settings.with_options(verification=method)
        self.transfers.use_verification(method)

    async def confirm_locks(self) -> None:
        """The run still holds its projects' locks (before it inserts): raises if their connection went."""
        if self.locks is not None:
            await self.locks.confirm()
