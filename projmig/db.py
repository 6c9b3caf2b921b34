"""The one place that turns database settings into an engine, and its failures into plain words."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .errors import ConfigError, PreflightError
from .settings import DatabaseSettings


def tls_argument(settings: DatabaseSettings, role: str = "database") -> bool | str | ssl.SSLContext:
    """asyncpg's ``ssl`` for ``settings.ssl`` (libpq's sslmode): a context that verifies the
    server's certificate against ``ssl_root_cert`` (or the system's CAs) for verify-ca/verify-full,
    one that encrypts without verifying for require, asyncpg's own ``prefer``, or no TLS."""
    if settings.ssl == "disable":
        return False
    if settings.ssl == "prefer":
        return "prefer"
    field = "ssl_root_cert"
    try:
        if settings.ssl == "require":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=settings.ssl_root_cert)
            context.check_hostname = settings.ssl == "verify-full"
        if settings.ssl_cert:
            field = "ssl_cert"
            context.load_cert_chain(settings.ssl_cert, settings.ssl_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{role}.db.{field}: cannot load it: {getattr(exc, 'strerror', None) or exc}") from None
    return context


def create_engine(settings: DatabaseSettings, *, pool_size: int = 2, role: str = "database") -> AsyncEngine:
    settings = settings.with_dsn_tls()
    return create_async_engine(
        settings.url(),
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.connect_timeout,
            "server_settings": {"application_name": "projmig"},
            # pgbouncer-friendly and no surprise plan caching across schema changes
            "statement_cache_size": 0,
            "ssl": tls_argument(settings, role),
        },
    )


@asynccontextmanager
async def open_engine(settings: DatabaseSettings, role: str) -> AsyncIterator[AsyncEngine]:
    """An engine whose first connection is proven; failures become one clear line."""
    engine = create_engine(settings, role=role)
    try:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise PreflightError(f"{role} database {settings.describe()}: {explain_connect_error(exc)}") from None
        yield engine
    finally:
        await engine.dispose()


def explain_connect_error(exc: BaseException) -> str:
    cause = exc
    if isinstance(exc, (DBAPIError, OperationalError, InterfaceError)) and exc.orig is not None:
        cause = exc.orig
        # SQLAlchemy's adapter keeps asyncpg's exception one level further down
        cause = getattr(cause, "__cause__", None) or cause
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate is not trusted ({cause.verify_message}; give db.ssl_root_cert "
            "the CA that signed it, and a host its certificate names)"
        )
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}"
    if isinstance(cause, asyncpg.InvalidPasswordError):
        return "password authentication failed (check user and password)"
    if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
        return f"not allowed to connect ({cause})"
    if isinstance(cause, asyncpg.InvalidCatalogNameError):
        return "database does not exist (check the database name)"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running there? check host and port)"
    if isinstance(cause, socket.gaierror):
        return "unknown host (check host)"
    if isinstance(cause, (asyncio.TimeoutError, TimeoutError)):
        return "timed out connecting (check host, port and firewall)"
    if isinstance(cause, OSError):
        return f"cannot connect ({cause.strerror or cause})"
    return f"cannot connect ({type(cause).__name__}: {cause})".replace("\n", " ")


async def alembic_revision(conn: AsyncConnection) -> str | None:
    """The deployment's schema revision, or None when it has no alembic_version row."""
    exists = await conn.scalar(text("SELECT to_regclass('public.alembic_version') IS NOT NULL"))
    if not exists:
        return None
    return await conn.scalar(text("SELECT version_num FROM alembic_version LIMIT 1"))
