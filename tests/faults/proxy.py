"""A fault-injecting TCP proxy of our own, between projmig and a real server (S3 or PostgreSQL).

It listens on 127.0.0.1 and relays every connection to the server, counting the bytes it forwards
in each direction: ``up`` (client -> server: S3 PUT bodies, SQL) and ``down`` (server -> client:
S3 GET bodies, query results). The test arms faults from outside:

- ``after(up=N, do="cut")``: once N more bytes went up, reset every open connection (RST);
  ``down=N`` for the other direction, ``connection=K`` / ``request=K`` (the K-th new connection /
  HTTP request from now on), ``match=b"COMMIT"`` (before those bytes go up).
- ``do="stall"`` freezes the open connections instead (nothing flows, nothing closes);
  ``do=<callable>`` calls it there (e.g. ``kill -9`` of the migration process).
- ``then``: what new connections meet afterwards: ``"heal"`` (they work), ``"refuse"`` (reset
  at once: the network is down until :meth:`heal`), ``"stall"`` (they hang).
- ``fail_requests(n, 503, "SlowDown")`` (``http=True`` proxies): answer the next ``n`` matching
  requests with an S3 error document instead of forwarding them.
- ``rewrite_etags(fn)`` (``http=True`` proxies): every ETag the server sends (``ETag`` headers,
  ``<ETag>`` in listings and copy results) reaches the client as ``fn(etag)`` (same length): what
  a client sees of objects whose ETags are not MD5s of their bytes (AWS SSE-KMS, SSE-C). Requests
  pass unchanged (they are signed): an ``If-Match`` with a rewritten ETag fails.
- ``tamper(old, new)``: every ``old`` in what goes up (request bodies) is sent as ``new`` (same
  length): bytes changed on the way, which only a checksum the server checks can catch (projmig
  sends bodies as ``UNSIGNED-PAYLOAD``).

It runs its own event loop in a daemon thread, so it keeps relaying while a Prefect flow runs its
tasks in other threads and loops, and while a migration runs in another process.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

UP, DOWN = "up", "down"
READ_SIZE = 64 * 1024
REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
           503: "Service Unavailable", 429: "Too Many Requests"}

Action = str | Callable[[], Any]


@dataclass
class _Trigger:
    kind: str  # "up", "down", "connection", "request", "match"
    at: int  # bytes / connections / requests counted from ``base``
    base: int
    do: Action
    then: str
    pattern: bytes = b""


@dataclass
class _ErrorRule:
    remaining: int
    status: int
    code: str
    match: Callable[[str, str], bool] | None


@dataclass
class Request:
    method: str
    target: str
    connection: int


@dataclass(eq=False)
class _Conn:
    number: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False
    tails: dict[str, bytes] = field(default_factory=lambda: {UP: b"", DOWN: b""})


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, name: str = "proxy", http: bool = False):
        self.upstream = (upstream_host, upstream_port)
        self.name = name
        self.http = http
        self.host = "127.0.0.1"
        self.port = 0
        self.bytes = {UP: 0, DOWN: 0}
        self.connections = 0
        self.requests: list[Request] = []
        self.faults: list[str] = []  # what was injected, in order (one entry per cut, stall, call, error reply)
        self.refused = 0
        self.fired = threading.Event()  # set whenever an armed trigger fires
        self._mode = "heal"
        self._triggers: list[_Trigger] = []
        self._errors: list[_ErrorRule] = []
        self._etag_rewrite: Callable[[str], str] | None = None
        self._tamper: tuple[bytes, bytes] | None = None
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{name}", daemon=True)
        self._server: asyncio.Server | None = None

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for conn in list(self._conns):
                self._kill(conn)

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def up(self) -> int:
        return self.bytes[UP]

    @property
    def down(self) -> int:
        return self.bytes[DOWN]

    # -- control (from any thread) ------------------------------------------------------------

    def after(
        self, *, up: int | None = None, down: int | None = None, connection: int | None = None,
        request: int | None = None, match: bytes | None = None, do: Action = "cut", then: str = "heal",
    ) -> None:
        """Arm one fault: ``do`` once the given point is reached, then treat new connections as ``then``."""
        given = {k: v for k, v in dict(up=up, down=down, connection=connection, request=request, match=match).items() if v is not None}
        if len(given) != 1:
            raise ValueError(f"give exactly one of up, down, connection, request, match (got {sorted(given)})")
        if then not in ("heal", "refuse", "stall") or (isinstance(do, str) and do not in ("cut", "stall")):
            raise ValueError(f"do must be 'cut', 'stall' or a callable, then 'heal', 'refuse' or 'stall' (got {do!r}, {then!r})")
        [(kind, at)] = given.items()
        if kind == "request" and not self.http:
            raise ValueError(f"{self.name}: counting requests needs an http=True proxy")

        def arm() -> None:
            if kind == "match":
                self._triggers.append(_Trigger("match", 0, 0, do, then, pattern=at))
                return
            base = {"up": self.bytes[UP], "down": self.bytes[DOWN], "connection": self.connections,
                    "request": len(self.requests)}[kind]
            self._triggers.append(_Trigger(kind, int(at), base, do, then))

        self._in_loop(arm)

    def fail_requests(
        self, n: int, status: int = 503, code: str = "SlowDown", match: Callable[[str, str], bool] | None = None
    ) -> None:
        """Answer the next ``n`` requests for which ``match(method, target)`` holds with an S3 error."""
        if not self.http:
            raise ValueError(f"{self.name}: answering requests needs an http=True proxy")
        self._in_loop(lambda: self._errors.append(_ErrorRule(n, status, code, match)))

    def rewrite_etags(self, fn: Callable[[str], str] | None) -> None:
        """ETags (32 hex digits, before any ``-N``) reach the client as ``fn(etag)``; None: as they are."""
        if not self.http:
            raise ValueError(f"{self.name}: rewriting ETags needs an http=True proxy")
        self._in_loop(lambda: setattr(self, "_etag_rewrite", fn))

    def tamper(self, old: bytes, new: bytes) -> None:
        """Send every ``old`` going up (within one read) as ``new``."""
        if len(old) != len(new) or not old:
            raise ValueError("tampering keeps the length (Content-Length stays right)")
        self._in_loop(lambda: setattr(self, "_tamper", (old, new)))

    def cut(self, then: str = "heal") -> None:
        """Reset every open connection now."""
        self._in_loop(lambda: self._fire(_Trigger("now", 0, 0, "cut", then)))

    def refuse(self) -> None:
        """Reset new connections until :meth:`heal` (open ones go on)."""
        self._in_loop(lambda: setattr(self, "_mode", "refuse"))

    def heal(self) -> None:
        """No more faults: disarm everything (ETags too), let new and stalled connections flow."""

        def heal() -> None:
            self._mode = "heal"
            self._triggers.clear()
            self._errors.clear()
            self._etag_rewrite = None
            self._tamper = None
            for conn in self._conns:
                conn.flowing.set()

        self._in_loop(heal)

    def reset_counts(self) -> None:
        def reset() -> None:
            self.bytes = {UP: 0, DOWN: 0}
            self.connections = 0
            self.requests = []
            self.faults = []
            self.refused = 0
            self.fired.clear()

        self._in_loop(reset)

    @property
    def armed(self) -> bool:
        return bool(self._triggers or any(rule.remaining > 0 for rule in self._errors))

    # -- relay (in the proxy's loop) ----------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = _Conn(self.connections, writer)
        self._conns.add(conn)
        try:
            self._fire_due()
            if self._mode == "refuse" or conn.dead:
                self.refused += 1
                self._kill(conn)
                return
            if self._mode != "stall":
                conn.flowing.set()
            try:
                server_reader, conn.server = await asyncio.open_connection(*self.upstream)
            except OSError:
                self._kill(conn)
                return
            await asyncio.gather(
                self._pump(conn, UP, reader, conn.server),
                self._pump(conn, DOWN, server_reader, writer),
            )
        finally:
            self._conns.discard(conn)
            self._kill(conn, reset=False)

    async def _pump(self, conn: _Conn, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads = _RequestHeads() if self.http and direction == UP else None
        etags = _EtagRewriter() if self.http and direction == DOWN else None
        try:
            while not conn.dead:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                if heads is None:
                    if etags is not None:
                        data = etags.feed(data, self._etag_rewrite)
                    await self._forward(conn, direction, data, writer)
                    continue
                for piece, request in heads.feed(data):
                    if request is not None and await self._on_request(conn, reader, *request):
                        return
                    await self._forward(conn, direction, piece, writer)
            if not conn.dead and writer.can_write_eof():
                writer.write_eof()  # pass the half-close on
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            self._kill(conn, reset=False)

    async def _forward(self, conn: _Conn, direction: str, data: bytes, writer: asyncio.StreamWriter) -> None:
        data = self._before_match(conn, direction, data)
        if direction == UP and self._tamper is not None and self._tamper[0] in data:
            self.faults.append(f"tampered {data.count(self._tamper[0])} x {self._tamper[0]!r}")
            data = data.replace(*self._tamper)
        while data and not conn.dead:
            await conn.flowing.wait()
            self._fire_due()
            if conn.dead:
                return
            if not conn.flowing.is_set():
                continue
            n = self._allowance(direction, len(data))
            piece, data = data[:n], data[n:]
            if piece:
                writer.write(piece)
                self.bytes[direction] += len(piece)
                await writer.drain()
        self._fire_due()

    def _allowance(self, direction: str, wanted: int) -> int:
        """Bytes that may go before the next byte trigger of this direction fires."""
        limits = [t.at - (self.bytes[direction] - t.base) for t in self._triggers if t.kind == direction]
        return max(0, min([wanted, *limits]))

    def _before_match(self, conn: _Conn, direction: str, data: bytes) -> bytes:
        """Fire ``match`` triggers before the matching bytes leave: forward what precedes them."""
        if direction != UP:
            return data
        for trigger in [t for t in self._triggers if t.kind == "match"]:
            seen = conn.tails[UP] + data
            index = seen.find(trigger.pattern)
            if index >= 0:
                self._triggers.remove(trigger)
                start = max(0, index - len(conn.tails[UP]))
                before, data = data[:start], data[start:]
                if before and conn.server is not None:
                    conn.server.write(before)
                    self.bytes[UP] += len(before)
                self._fire(trigger)
                if conn.dead or not conn.flowing.is_set():
                    return b"" if conn.dead else data
        longest = max((len(t.pattern) for t in self._triggers if t.kind == "match"), default=1)
        conn.tails[UP] = (conn.tails[UP] + data)[-(longest - 1):] if longest > 1 else b""
        return data

    async def _on_request(self, conn: _Conn, reader: asyncio.StreamReader, method: str, target: str, expect: bool) -> bool:
        """Count a request; answer it with an error instead of forwarding it when a rule says so."""
        self.requests.append(Request(method, target, conn.number))
        self._fire_due()
        if conn.dead:
            return True
        for rule in self._errors:
            if rule.remaining > 0 and (rule.match is None or rule.match(method, target)):
                rule.remaining -= 1
                self.faults.append(f"{rule.status} {rule.code} for {method} {target}")
                await self._reply_error(conn, reader, method, target, rule)
                return True
        return False

    async def _reply_error(self, conn: _Conn, reader: asyncio.StreamReader, method: str, target: str, rule: _ErrorRule) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by the fault proxy'
            "</Message><Resource>{target}</Resource><RequestId>fault-{n}</RequestId></Error>"
        ).format(code=rule.code, target=target.split("?")[0], n=len(self.faults)).encode()
        head = (
            f"HTTP/1.1 {rule.status} {REASONS.get(rule.status, 'Error')}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: fault-{len(self.faults)}\r\nConnection: close\r\n\r\n"
        ).encode()
        conn.client.write(head + (b"" if method == "HEAD" else body))
        await conn.client.drain()
        conn.dead = True  # the server side is done with: nothing more goes there
        if conn.server is not None:
            conn.server.close()
        # the client may still be sending a body: read it away until it closes, so that closing
        # here does not reset the connection before it has read the answer
        try:
            async with asyncio.timeout(30):
                while await reader.read(READ_SIZE):
                    pass
        except (TimeoutError, ConnectionError, OSError):
            pass

    def _fire_due(self) -> None:
        counts = {"up": self.bytes[UP], "down": self.bytes[DOWN], "connection": self.connections, "request": len(self.requests)}
        for trigger in list(self._triggers):
            if trigger.kind in counts and counts[trigger.kind] - trigger.base >= trigger.at and trigger in self._triggers:
                self._triggers.remove(trigger)
                self._fire(trigger)

    def _fire(self, trigger: _Trigger) -> None:
        self._mode = trigger.then
        if trigger.do == "cut":
            self.faults.append(f"cut {len(self._conns)} connections at {trigger.kind} {trigger.at or trigger.pattern!r}")
            for conn in list(self._conns):
                self._kill(conn)
        elif trigger.do == "stall":
            self.faults.append(f"stalled {len(self._conns)} connections at {trigger.kind} {trigger.at or trigger.pattern!r}")
            for conn in self._conns:
                conn.flowing.clear()
        else:
            self.faults.append(f"called {getattr(trigger.do, '__name__', trigger.do)} at {trigger.kind} {trigger.at or trigger.pattern!r}")
            trigger.do()  # type: ignore[operator]
        self.fired.set()

    def _kill(self, conn: _Conn, *, reset: bool = True) -> None:
        """Close both sides of a connection; ``reset``: with an RST, as a cut network does."""
        conn.dead = True
        conn.flowing.set()  # wake a stalled pump so that it sees the connection is gone
        for writer in (conn.client, conn.server):
            if writer is None or writer.transport.is_closing() and not reset:
                continue
            if reset:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                writer.transport.abort()
            else:
                writer.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def _in_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the proxy's loop (at once when already there, e.g. from a trigger)."""
        if threading.current_thread() is self._thread:
            fn()
            return

        async def call() -> None:
            fn()

        self._run(call())


_ETAG = re.compile(rb'((?i:etag):[ \t]*"|<ETag>(?:&quot;|&#34;|"))([0-9a-f]{32})')
_ETAG_OPENERS = (b'etag: "', b"<etag>&quot;", b"<etag>&#34;", b'<etag>"')
_HEX = re.compile(rb"[0-9a-f]{0,31}")


class _EtagRewriter:
    """Rewrites the ETags in a server's byte stream; an ETag's opening and first digits at the end of
    a read are held back until the next one (an ETag cut there is rewritten whole)."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes, rewrite: Callable[[str], str] | None) -> bytes:
        data, self.held = self.held + data, b""
        if rewrite is None:
            return data

        def one(match: re.Match[bytes]) -> bytes:
            shown = rewrite(match.group(2).decode()).encode()
            assert len(shown) == 32, "a rewritten ETag keeps its length (Content-Length stays right)"
            return match.group(1) + shown

        data = _ETAG.sub(one, data)
        keep = _partial_etag_at_end(data)
        if keep:
            data, self.held = data[:-keep], data[-keep:]
        return data


def _partial_etag_at_end(data: bytes) -> int:
    for k in range(min(len(data), 43), 0, -1):
        tail = data[-k:].lower()
        for opener in _ETAG_OPENERS:
            # (a read ending inside the opener itself is not caught: holding back every trailing
            # "e" or "<" would stall bodies that end so)
            if tail.startswith(opener) and _HEX.fullmatch(tail[len(opener):]):
                return k
    return 0


class _RequestHeads:
    """Splits a client's byte stream into HTTP request heads and bodies (``Content-Length`` bodies:
    what botocore sends with checksums ``when_required``)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.body_left = 0

    def feed(self, data: bytes) -> list[tuple[bytes, tuple[str, str, bool] | None]]:
        """Pieces to forward in order; a piece that starts a request comes with (method, target, expect-100)."""
        pieces: list[tuple[bytes, tuple[str, str, bool] | None]] = []
        while data:
            if self.body_left:
                n = min(self.body_left, len(data))
                pieces.append((data[:n], None))
                self.body_left -= n
                data = data[n:]
                continue
            self.buffer += data
            data = b""
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, data = self.buffer[: end + 4], self.buffer[end + 4:]
            self.buffer = b""
            lines = head.decode("latin-1").split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise ValueError(f"fault proxy: chunked request bodies are not supported ({method} {target})")
            self.body_left = int(headers.get("content-length", "0") or 0)
            pieces.append((head, (method, target, headers.get("expect", "").lower() == "100-continue")))
        return pieces
