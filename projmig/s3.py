"""The one place that turns S3 settings into a client, and the retry rule every S3 call follows."""

from __future__ import annotations

import asyncio
import logging
import os
import functools
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.loaders import Loader, create_loader
from botocore.utils import parse_timestamp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from .credentials import reveal
from .errors import ConfigError, TransferError
from .settings import MigrationOptions, Provider, S3Settings

log = logging.getLogger("projmig.s3")
T = TypeVar("T")

# S3 error codes that mean "try again later", whatever the HTTP status says
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
        "OperationAborted",
    }
)


# a body that does not match the checksum sent with it (AWS and SeaweedFS; MinIO)
CHECKSUM_MISMATCH = frozenset({"BadDigest", "XAmzContentChecksumMismatch"})

# what an S3 error code means, for replies that give no message (Ceph's mostly don't)
MEANINGS = {
    "AccessDenied": "access denied",
    "BadDigest": "the body does not match its Content-MD5",
    "EntityTooSmall": "a part is smaller than the server's minimum",
    "InvalidAccessKeyId": "unknown access key",
    "InvalidPart": "a part is missing or has another ETag",
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "the object does not exist",
    "NoSuchUpload": "the multipart upload does not exist (aborted or completed)",
    "PreconditionFailed": "the object changed (its ETag is not the one asked for)",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
}

@functools.cache
def service_loader() -> Loader:
    """botocore's loader of the S3 service model and endpoint rules, read once per process: data that
    no run changes (parsing it again costs ~120 ms of CPU per session)."""
    return create_loader()


def new_session() -> AioSession:
    """A botocore session for the clients of one run (:class:`projmig.run.MigrationRun`, in one
    thread: sessions are not thread-safe). With the process's loader a session costs ~30 ms of CPU,
    each further client of it ~10 ms."""
    session = get_session()
    session.register_component("data_loader", service_loader())
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    return session


def _timestamp(value: Any) -> datetime:
    """S3's ISO 8601 times (every listed object has one) without dateutil's generic parser, which
    costs ~0.1 ms per object in a listing; anything else (HTTP dates) the botocore way."""
    if isinstance(value, str) and value[-1:] == "Z":
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return parse_timestamp(value)


def s3_client(
    settings: S3Settings, *, session: AioSession | None = None, max_connections: int = 32, connect_timeout: float = 10.0,
) -> AbstractAsyncContextManager[Any]:
    """An aiobotocore S3 client (use as ``async with``), of ``session`` (a run's, else a new one).
    Retries are ours, not botocore's."""
    config = AioConfig(
        # the default ("when_supported") breaks ranged GETs and multipart on some servers
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 1},
        max_pool_connections=max_connections,
        connect_timeout=connect_timeout,
        read_timeout=120,
        tcp_keepalive=True,
        s3={"addressing_style": "auto" if settings.provider == Provider.AWS else "path"},
    )
    return (session or new_session()).create_client(
        "s3",
        endpoint_url=settings.endpoint,
        verify=tls_verify(settings),
        region_name=settings.region,
        aws_access_key_id=reveal(settings.access_key, "access_key"),
        aws_secret_access_key=reveal(settings.secret_key, "secret_key"),
        config=config,
    )


def tls_verify(settings: S3Settings) -> bool | str | None:
    """botocore's ``verify``: the CA file, False for plain http (a TLS context loads the CA bundle:
    ~30 ms per client) or when verification is off, None for the default CAs."""
    if (settings.endpoint or "").startswith("http://") or not settings.verify:
        return False
    if settings.ca_bundle and not os.access(settings.ca_bundle, os.R_OK):
        raise ConfigError(f"{settings.describe()}: s3.ca_bundle {settings.ca_bundle}: cannot read it (no such file, or no right to)")
    return settings.ca_bundle


def tls_context(settings: S3Settings) -> ssl.SSLContext | bool:
    """The same choice as :func:`tls_verify` for aiohttp (the lean data path; True: default CAs)."""
    verify = tls_verify(settings)
    if verify is False:
        return False
    return ssl.create_default_context(cafile=verify) if verify else True


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code")
        if code:
            return str(code)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else None
    return None


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: throttling, 5xx, timeouts, cut or refused connections (not a
    certificate that is not trusted: that stays so)."""
    if is_tls_error(exc):
        return False
    if isinstance(exc, ClientError):
        status = http_status(exc) or 0
        return error_code(exc) in TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(
        exc,
        (
            asyncio.TimeoutError,
            TimeoutError,
            aiohttp.ClientError,  # includes ClientPayloadError: a reset mid-GET surfaces here
            EndpointConnectionError,
            ConnectionClosedError,
            ConnectTimeoutError,
            ReadTimeoutError,
            ResponseStreamingError,
            IncompleteReadError,
            ConnectionError,
        ),
    )


def upload_gone(exc: BaseException) -> bool:
    """The multipart upload a call named no longer exists (aborted, or completed meanwhile).
    AWS says ``NoSuchUpload``; Ceph's RADOS Gateway answers ``ListParts`` with ``NoSuchKey``."""
    code = error_code(exc)
    return code == "NoSuchUpload" or (
        code == "NoSuchKey" and isinstance(exc, ClientError) and exc.operation_name == "ListParts"
    )


def is_tls_error(exc: BaseException) -> bool:
    return isinstance(exc, (SSLError, ssl.SSLError, aiohttp.ClientSSLError))


def describe_error(exc: BaseException) -> str:
    code = error_code(exc)
    if code:
        message = exc.response.get("Error", {}).get("Message") if isinstance(exc, ClientError) else ""
        if not message:  # Ceph's error documents mostly carry a code only
            status = http_status(exc)
            where = f"HTTP {status}" if status and str(status) != code else ""
            meaning = MEANINGS.get(code, "")
            message = f"{meaning} ({where})" if meaning and where else meaning or where
        return f"{code}{': ' + message if message else ''}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


class Retrier:
    """Runs one S3 call under a deadline, retrying transient failures with backoff and jitter."""

    def __init__(self, attempts: int = 6, timeout: float = 300.0, initial_wait: float = 0.2, max_wait: float = 10.0):
        self.attempts = attempts
        self.timeout = timeout
        self.initial_wait = initial_wait
        self.max_wait = max_wait

    @classmethod
    def of(cls, options: MigrationOptions) -> Retrier:
        """A migration's rule for its S3 calls (``options.s3_max_attempts``, ``options.s3_call_timeout``)."""
        return cls(attempts=options.s3_max_attempts, timeout=options.s3_call_timeout)

    async def __call__(self, what: str, call: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
        deadline = timeout or self.timeout
        # The first attempt outside tenacity: setting up its loop costs ~40 µs of CPU, two S3 calls
        # per small object copied. A transient failure is handed to the loop as its first attempt,
        # so the attempts, waits and the final error are tenacity's as before.
        try:
            async with asyncio.timeout(deadline):
                return await call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            first_failure: BaseException | None = exc
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                # full jitter: many clients retrying a throttled server must not retry in step
                wait=wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
                retry=retry_if_exception(is_transient),
                reraise=False,
            ):
                with attempt:
                    if first_failure is not None:
                        failed, first_failure = first_failure, None
                        raise failed
                    # a stalled PUT never trips read_timeout (Expect: 100-continue): bound every call
                    async with asyncio.timeout(deadline):
                        return await call()
        except RetryError as exc:
            last = exc.last_attempt.exception()
            # our own deadline fired (a bare TimeoutError says nothing): say so
            cause = f"no answer within {deadline:g} s" if type(last) is TimeoutError else describe_error(last)
            raise TransferError(f"{what}: {cause} (gave up after {self.attempts} attempts)", transient=True) from last
        raise AssertionError("unreachable")  # pragma: no cover


def explain_bucket_error(exc: BaseException) -> str:
    """What an operator should fix when a bucket check fails."""
    code = error_code(exc)
    status = http_status(exc)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403 or code in ("403", "AccessDenied"):
        return "access denied (check access_key and secret_key, and the bucket policy)"
    if code in ("NoSuchBucket", "404") or status == 404:
        return "bucket does not exist (check bucket)"
    if is_tls_error(exc):
        return (
            "TLS: the endpoint's certificate is not trusted or the handshake failed (give s3.ca_bundle the CA "
            "that signed it, and an endpoint host its certificate names)"
        )
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, aiohttp.ClientConnectorError, ConnectionError)):
        return "cannot connect to the endpoint (check endpoint)"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out (check endpoint and network)"
    if isinstance(exc, BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    return describe_error(exc)
