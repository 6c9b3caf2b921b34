"""The calls made once per object: GET an object (or a byte range), PUT an object, PUT a part, copy
an object server-side, read an object through SHA-256 (``projmig verify``), and a page of a listing
(1,000 objects).

Two implementations of the same calls, chosen per side by :func:`data_path`:

- :class:`BotoData`: aiobotocore, for every provider (AWS's virtual-hosted addressing included).
- :class:`LeanData`: aiohttp, signed by botocore's SigV4 signer, for path-style endpoints (MinIO,
  Ceph, SeaweedFS: ``provider`` other than AWS, ``endpoint`` given). botocore spends ~1.2 ms of CPU
  per request in its generic machinery (event hooks, serialisation, endpoint rules, user agent,
  response parsing); this path ~0.3 ms, which is what bounds the copy of many small objects
  (measured here: 1,000 objects of 64 KiB, 3.2 s -> 0.9 s of client CPU). A listing is parsed by
  botocore at ~45 µs per object listed, here at ~20 µs, most of it ElementTree's C parser (100,000
  objects: 4.8 s -> 2.1 s of client CPU).

Both return the same botocore-shaped answers (``ETag``, ``ContentLength``, ``ContentType``, ...,
``Metadata``) and fail the same way: an S3 error reply is a botocore ``ClientError`` with the reply's
code, message and HTTP status; a cut connection an aiohttp error. So retries
(:class:`projmig.s3.Retrier`), error messages and the resume logic do not depend on the path.
Everything else (HEAD, multipart create/complete/abort, uploads listings) stays botocore: calls made
a few times per migration, or once per large object.

Bodies are read into a buffer of the expected size that the caller gives (the run's, reused:
:class:`projmig.budget.ByteBudget`), each chunk as it was received (``body.read(n)`` would join
them: a copy more), and sent from it in pieces (:class:`_Pieces`; a ``BytesIO`` around it would
be a copy more).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.utils import SAFE_CHARS, percent_encode
from yarl import URL

from .credentials import reveal
from .limits import MiB
from .s3 import tls_context
from .settings import Provider, S3Settings

READ_CHUNK = 1 * MiB  # bytes taken from a response body at once
SEND_PIECE = 64 * 1024  # bytes of a body handed to the socket at once (as aiohttp reads a file)
OFF_LOOP = 1 * MiB  # hash bodies at least this large in a worker thread (the event loop keeps going)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
Buffer = bytes | bytearray | memoryview  # a body to send
Listed = tuple[str, int, str]  # key, size, ETag (unquoted)
CARRIED = {  # botocore name -> header, for the headers a copy carries over
    "ContentType": "content-type",
    "ContentEncoding": "content-encoding",
    "ContentDisposition": "content-disposition",
    "CacheControl": "cache-control",
}


# The copy condition as Ceph's RADOS Gateway 16.2 reads it: it ignores x-amz-copy-source-if-match
# (S3's name) and honours this one (412 PreconditionFailed); sent as well, to Ceph only.
CEPH_COPY_IF_MATCH = "x-amz-copy-if-match"

CHECKSUMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")  # S3's additional checksums (botocore: Checksum<name>)


class DataPath(Protocol):
    async def get(
        self, bucket: str, key: str, into: memoryview, *, byte_range: str | None = None, if_match: str | None = None,
        checksums: bool = False,
    ) -> tuple[dict[str, Any], int]:
        """(answer headers, bytes received): the body read into ``into``, a buffer of the size expected
        (a longer body is counted, not stored: the caller checks the count). ``checksums``: ask for
        the object's stored checksums too (``ChecksumMode=ENABLED``)."""

    async def put(self, bucket: str, key: str, body: Buffer, **headers: Any) -> dict[str, Any]:
        """PutObject; ``headers`` in botocore's names (ContentType, ..., Metadata, ChecksumSHA256...)."""

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: Buffer, *, content_md5: str | None = None
    ) -> dict[str, Any]: ...

    async def copy(
        self, src_bucket: str, src_key: str, bucket: str, key: str, *, if_match: str, **headers: Any
    ) -> dict[str, Any]:
        """CopyObject (same endpoint): the server copies the object if its ETag is ``if_match``;
        the answer's ``CopyObjectResult.ETag`` is the copy's. The copy gets ``headers`` (botocore's
        names, as for :meth:`put`) instead of the source's (``MetadataDirective=REPLACE``)."""

    async def sha256(self, bucket: str, key: str) -> str:
        """SHA-256 (hex) of an object's bytes, streamed (never the whole object in memory)."""

    async def list_page(
        self, bucket: str, prefix: str, token: str | None, *, start_after: str | None = None
    ) -> tuple[list[Listed], str | None]:
        """One ListObjectsV2 page (up to 1,000 objects): (key, size, unquoted ETag) each, and the
        continuation token of the next page (None: this was the last); ``start_after``: the keys
        after this one (S3's ``StartAfter``)."""


async def read_body(read: Callable[[], Awaitable[bytes]], into: memoryview) -> int:
    """A response body, chunk by chunk (``read()``: the next one, empty at its end), into ``into``;
    how many bytes it had (those beyond ``into`` counted, not stored)."""
    got = 0
    while chunk := await read():
        end = got + len(chunk)
        if end <= len(into):
            into[got:end] = chunk
        got = end
    return got


async def digest(algorithm: str, data: Buffer) -> bytes:
    """md5/sha256 of a buffer; a large one in a worker thread (hashlib releases the GIL)."""
    if len(data) >= OFF_LOOP:
        return await asyncio.to_thread(lambda: hashlib.new(algorithm, data).digest())
    return hashlib.new(algorithm, data).digest()


class BotoData:
    """The data calls through an aiobotocore client. ``ceph``: the client's CopyObject requests carry
    their condition under Ceph's name as well (:data:`CEPH_COPY_IF_MATCH`)."""

    def __init__(self, client: Any, *, ceph: bool = False):
        self.client = client
        if ceph:  # the client's own event handlers (botocore copies the session's per client)
            client.meta.events.register("before-sign.s3.CopyObject", _ceph_copy_condition, unique_id=CEPH_COPY_IF_MATCH)

    async def get(
        self, bucket: str, key: str, into: memoryview, *, byte_range: str | None = None, if_match: str | None = None,
        checksums: bool = False,
    ) -> tuple[dict[str, Any], int]:
        extra = {k: v for k, v in (("Range", byte_range), ("IfMatch", if_match)) if v}
        if checksums:
            extra["ChecksumMode"] = "ENABLED"
        resp = await self.client.get_object(Bucket=bucket, Key=key, **extra)
        async with resp["Body"] as body:
            got = await read_body(lambda: body.read(READ_CHUNK), into)
        return resp, got

    # (botocore takes a file: each call its own, so that a retried call sends the body again)
    async def put(self, bucket: str, key: str, body: Buffer, **headers: Any) -> dict[str, Any]:
        return await self.client.put_object(Bucket=bucket, Key=key, Body=io.BytesIO(body), **headers)

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: Buffer, *, content_md5: str | None = None
    ) -> dict[str, Any]:
        extra = {"ContentMD5": content_md5} if content_md5 else {}
        return await self.client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=io.BytesIO(body), **extra
        )

    async def copy(
        self, src_bucket: str, src_key: str, bucket: str, key: str, *, if_match: str, **headers: Any
    ) -> dict[str, Any]:
        return await self.client.copy_object(
            Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key}, CopySourceIfMatch=if_match,
            MetadataDirective="REPLACE", **headers,
        )

    async def list_page(
        self, bucket: str, prefix: str, token: str | None, *, start_after: str | None = None
    ) -> tuple[list[Listed], str | None]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        if start_after:
            kwargs["StartAfter"] = start_after
        page = await self.client.list_objects_v2(**kwargs)
        items = [(item["Key"], item["Size"], item["ETag"].strip('"')) for item in page.get("Contents", [])]
        return items, page["NextContinuationToken"] if page.get("IsTruncated") else None

    async def sha256(self, bucket: str, key: str) -> str:
        resp = await self.client.get_object(Bucket=bucket, Key=key)
        async with resp["Body"] as body:
            return await _sha256_of(body.iter_chunks(READ_CHUNK))


def _ceph_copy_condition(request: AWSRequest, **_: Any) -> None:
    etag = request.headers.get("x-amz-copy-source-if-match")
    if etag:
        request.headers[CEPH_COPY_IF_MATCH] = etag


async def _sha256_of(chunks: AsyncIterator[bytes]) -> str:
    hasher = hashlib.sha256()
    async for chunk in chunks:
        if len(chunk) >= OFF_LOOP:
            await asyncio.to_thread(hasher.update, chunk)  # hashlib releases the GIL: the loop goes on
        else:
            hasher.update(chunk)
    return hasher.hexdigest()


def lean_possible(settings: S3Settings) -> bool:
    """Path-style addressing at an explicit endpoint: what LeanData speaks."""
    return bool(settings.endpoint) and settings.provider != Provider.AWS


class LeanData:
    """The data calls over aiohttp, signed with botocore's AWS Signature Version 4 (path-style addressing).

    Bodies are sent as ``UNSIGNED-PAYLOAD`` (botocore's ``payload_signing_enabled=False``), over http
    too: what arrives is checked anyway, by the server against ``Content-MD5`` where we send one, and
    by us against the ETag (the MD5 the server computed of what it received) of every part and
    object. Signing the payload would hash every byte once more (SHA-256, ~1 s of CPU per GiB here)
    for no check we do not already have."""

    def __init__(self, settings: S3Settings, http: aiohttp.ClientSession):
        assert settings.endpoint
        parts = urlsplit(settings.endpoint)
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.signer = _PayloadGivenSigV4(
            Credentials(reveal(settings.access_key, "access_key"), reveal(settings.secret_key, "secret_key")),
            "s3", settings.region,
        )
        # the Host header as botocore derives it from the URL (default ports dropped), once
        self.host = S3SigV4Auth.headers_to_sign(self.signer, AWSRequest(method="GET", url=self.base))["host"]
        self.http = http
        self.ceph = settings.provider == Provider.CEPH

    # -- the calls ------------------------------------------------------------------------------

    async def get(
        self, bucket: str, key: str, into: memoryview, *, byte_range: str | None = None, if_match: str | None = None,
        checksums: bool = False,
    ) -> tuple[dict[str, Any], int]:
        headers = {k: v for k, v in (("range", byte_range), ("if-match", if_match)) if v}
        if checksums:
            headers["x-amz-checksum-mode"] = "ENABLED"
        url, signed = self._signed("GET", bucket, key, {}, headers, EMPTY_SHA256)
        async with self.http.get(url, headers=signed) as resp:
            if resp.status not in (200, 206):
                raise await _client_error(resp, "GetObject")
            answer = _answer(resp)
            got = await read_body(resp.content.readany, into)
        return answer, got

    async def put(self, bucket: str, key: str, body: Buffer, **headers: Any) -> dict[str, Any]:
        fields = _object_headers(headers)
        for name in CHECKSUMS:
            if headers.get(f"Checksum{name}"):
                fields[f"x-amz-checksum-{name.lower()}"] = headers[f"Checksum{name}"]
        return await self._send("PUT", "PutObject", bucket, key, {}, fields, body)

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: Buffer, *, content_md5: str | None = None
    ) -> dict[str, Any]:
        query = {"partNumber": str(number), "uploadId": upload_id}
        fields = {"content-md5": content_md5} if content_md5 else {}
        return await self._send("PUT", "UploadPart", bucket, key, query, fields, body)

    async def sha256(self, bucket: str, key: str) -> str:
        url, signed = self._signed("GET", bucket, key, {}, {}, EMPTY_SHA256)
        async with self.http.get(url, headers=signed) as resp:
            if resp.status != 200:
                raise await _client_error(resp, "GetObject")
            return await _sha256_of(resp.content.iter_chunked(READ_CHUNK))

    async def copy(
        self, src_bucket: str, src_key: str, bucket: str, key: str, *, if_match: str, **headers: Any
    ) -> dict[str, Any]:
        fields = {
            "x-amz-copy-source": percent_encode(f"{src_bucket}/{src_key}", safe=SAFE_CHARS + "/"),  # as botocore
            "x-amz-copy-source-if-match": if_match,
            "x-amz-metadata-directive": "REPLACE",
            **_object_headers(headers),
        }
        if self.ceph:
            fields[CEPH_COPY_IF_MATCH] = if_match
        url, signed = self._signed("PUT", bucket, key, {}, fields, EMPTY_SHA256)
        async with self.http.put(url, headers=signed) as resp:
            if resp.status != 200:
                raise await _client_error(resp, "CopyObject")
            body = await resp.read()
            answer = _answer(resp)
        root = ElementTree.fromstring(body)
        ns = _namespace(root)
        if root.tag == f"{ns}Error":  # S3 may answer 200 and report the failure in the body
            raise _error_of(root, ns, resp, "CopyObject")
        answer["CopyObjectResult"] = {"ETag": root.findtext(f"{ns}ETag") or ""}
        return answer

    async def list_page(
        self, bucket: str, prefix: str, token: str | None, *, start_after: str | None = None
    ) -> tuple[list[Listed], str | None]:
        # keys come URL-encoded (encoding-type=url, as botocore asks): XML 1.0 cannot carry every key
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        if start_after:
            query["start-after"] = start_after
        query |= {"max-keys": "1000", "encoding-type": "url"}
        url, signed = self._signed("GET", bucket, "", query, {}, EMPTY_SHA256)
        async with self.http.get(url, headers=signed) as resp:
            if resp.status != 200:
                raise await _client_error(resp, "ListObjectsV2")
            body = await resp.read()
        return _parse_listing(body)

    async def _send(
        self, method: str, operation: str, bucket: str, key: str, query: dict[str, str], headers: dict[str, str],
        body: Buffer,
    ) -> dict[str, Any]:
        url, signed = self._signed(method, bucket, key, query, headers, "UNSIGNED-PAYLOAD")
        async with self.http.request(method, url, headers=signed, data=_Pieces(body)) as resp:
            if resp.status != 200:
                raise await _client_error(resp, operation)
            await resp.read()
            return _answer(resp)

    # -- signature ------------------------------------------------------------------------------

    def _signed(
        self, method: str, bucket: str, key: str, query: dict[str, str], headers: dict[str, str], payload: str
    ) -> tuple[URL, dict[str, str]]:
        # in the caller's order, as botocore sends them (the signature sorts them for itself)
        encoded_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items())
        path = f"{self.base}/{bucket}/{quote(key, safe='/~')}" if key else f"{self.base}/{bucket}"
        url = path + (f"?{encoded_query}" if encoded_query else "")
        request = AWSRequest(method=method, url=url, headers={"host": self.host, **headers})
        request.context["payload_sha256"] = payload
        self.signer.add_auth(request)
        return URL(url, encoded=True), dict(request.headers.items())


class _Pieces(aiohttp.payload.Payload):
    """A body sent from its buffer :data:`SEND_PIECE` bytes at a time, each piece a copy: the socket's
    queue may keep what it was handed after the request ended (a cut or timed-out call closes its
    connection gracefully: it still sends what it queued), and the buffer is reused by then."""

    _autoclose = True  # (in memory: nothing to close, as aiohttp's own bytes payloads)

    def __init__(self, body: Buffer):
        view = memoryview(body).cast("B")
        super().__init__(view, content_type="application/octet-stream")
        self._size = len(view)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        view = self._value if content_length is None else self._value[:content_length]
        for start in range(0, len(view), SEND_PIECE):
            await writer.write(bytes(view[start:start + SEND_PIECE]))


class _PayloadGivenSigV4(S3SigV4Auth):
    """botocore's S3 signature with the payload's hash handed in (``UNSIGNED-PAYLOAD`` for bodies),
    where botocore would decide from the URL's scheme and hash the body itself over http.

    Two things botocore does again for every request are done once: the signing key (it depends
    on the date, region and service only) and the selection of the headers to sign (botocore's
    ``add_auth`` asks for it twice; the request's ``host`` header is set by the caller, so the URL is
    not parsed for it). Signing took 75 -> 35 µs of CPU a request; it was ~12 % of the client's CPU when
    copying small objects."""

    def __init__(self, credentials: Credentials, service_name: str, region_name: str):
        super().__init__(credentials, service_name, region_name)
        self._key_date = ""
        self._key = b""

    def payload(self, request: AWSRequest) -> str:
        return request.context["payload_sha256"]

    def headers_to_sign(self, request: AWSRequest) -> Any:
        chosen = request.context.get("headers_to_sign")
        if chosen is None:  # the headers are final by now: add_auth changes them before it asks
            chosen = request.context["headers_to_sign"] = super().headers_to_sign(request)
        return chosen

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        date = request.context["timestamp"][0:8]
        if date != self._key_date:  # botocore's derivation (AWS4 + secret -> date -> region -> service)
            key = self._sign(f"AWS4{self.credentials.secret_key}".encode(), date)
            for part in (self._region_name, self._service_name, "aws4_request"):
                key = self._sign(key, part)
            self._key_date, self._key = date, key
        return self._sign(self._key, string_to_sign, hex=True)


def _object_headers(headers: dict[str, Any]) -> dict[str, str]:
    """An object's headers given in botocore's names (ContentType, ..., Metadata) as HTTP headers."""
    fields = {name: str(headers[field]) for field, name in CARRIED.items() if headers.get(field)}
    for meta, value in (headers.get("Metadata") or {}).items():
        fields[f"x-amz-meta-{meta.lower()}"] = str(value)
    return fields


def _namespace(root: ElementTree.Element) -> str:
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _parse_listing(body: bytes) -> tuple[list[Listed], str | None]:
    """A ListObjectsV2 reply: its objects and the next page's continuation token."""
    root = ElementTree.fromstring(body)
    ns = _namespace(root)
    url_encoded = root.findtext(f"{ns}EncodingType") == "url"
    items: list[Listed] = []
    for entry in root.iterfind(f"{ns}Contents"):
        key = entry.findtext(f"{ns}Key") or ""
        items.append((
            unquote_plus(key) if url_encoded else key,
            int(entry.findtext(f"{ns}Size") or 0),
            (entry.findtext(f"{ns}ETag") or "").strip('"'),
        ))
    truncated = root.findtext(f"{ns}IsTruncated") == "true"
    return items, root.findtext(f"{ns}NextContinuationToken") if truncated else None


def _answer(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """A reply's headers under botocore's names."""
    headers = resp.headers
    answer: dict[str, Any] = {"ResponseMetadata": {"HTTPStatusCode": resp.status}}
    if "ETag" in headers:
        answer["ETag"] = headers["ETag"]
    if "Content-Length" in headers:
        answer["ContentLength"] = int(headers["Content-Length"])
    for field, name in CARRIED.items():
        if name in headers:
            answer[field] = headers[name]
    for name in CHECKSUMS:
        if f"x-amz-checksum-{name}" in headers:  # (case-insensitive)
            answer[f"Checksum{name}"] = headers[f"x-amz-checksum-{name}"]
    if "x-amz-checksum-type" in headers:
        answer["ChecksumType"] = headers["x-amz-checksum-type"]
    metadata = {k[11:].lower(): v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")}
    if metadata:
        answer["Metadata"] = metadata
    return answer


async def _client_error(resp: aiohttp.ClientResponse, operation: str) -> ClientError:
    """An S3 error reply as botocore reports it: code and message from the XML body, else the status."""
    try:
        body = await resp.read()
    except aiohttp.ClientError:
        body = b""
    root = None
    if body:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            pass
    return _error_of(root, "", resp, operation)


def _error_of(root: ElementTree.Element | None, ns: str, resp: aiohttp.ClientResponse, operation: str) -> ClientError:
    code, message = str(resp.status), resp.reason or ""
    if root is not None:
        code = root.findtext(f"{ns}Code") or code
        message = root.findtext(f"{ns}Message") or message
    metadata = {
        "HTTPStatusCode": resp.status,
        "HTTPHeaders": {k.lower(): v for k, v in resp.headers.items()},
        "RequestId": resp.headers.get("x-amz-request-id", ""),
    }
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata}, operation)


@asynccontextmanager
async def data_path(
    settings: S3Settings, client: Any, *, lean: bool = True, max_connections: int = 32, connect_timeout: float = 10.0,
    read_timeout: float = 120.0,
) -> AsyncIterator[DataPath]:
    """The data calls for one side: LeanData where possible (and ``lean``), else ``client``'s."""
    if not (lean and lean_possible(settings)):
        yield BotoData(client, ceph=settings.provider == Provider.CEPH)
        return
    connector = aiohttp.TCPConnector(limit=max_connections, ssl=tls_context(settings))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers={"Content-Type"},
    ) as http:
        yield LeanData(settings, http)
