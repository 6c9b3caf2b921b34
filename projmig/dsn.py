"""A PostgreSQL DSN read strictly, the way libpq reads it, and the TLS words it may carry.

A lenient reading would take part of a password for the host or port and print it in an error: here
every error names what is wrong, never the DSN itself (it holds a password)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:  # imported where a URL is made (settings are read without SQLAlchemy)
    from sqlalchemy.engine import URL

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: tuple[str, ...] = SslMode.__args__  # type: ignore[attr-defined]
DSN_SSL_PARAMETERS = {"sslmode": "ssl", "sslrootcert": "ssl_root_cert", "sslcert": "ssl_cert", "sslkey": "ssl_key"}


class DsnError(ValueError):
    """A DSN that cannot be read; its message never quotes the DSN (it holds a password)."""


@dataclass(frozen=True)
class ParsedDsn:
    url: URL
    ssl: dict[str, str]  # DatabaseSettings field -> value, from the DSN's sslmode/sslrootcert/...


def parse_dsn(dsn: str) -> ParsedDsn:
    """``postgresql://user:password@host:port/database?sslmode=...``, read strictly the way libpq
    reads it: ``@``, ``:`` and ``/`` in the user or password must be percent-encoded. A lenient
    reading would take part of a password for the host or port and print it in an error."""
    hint = "percent-encode @ : / in the user and password as %40 %3A %2F"
    text = dsn.strip()
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise DsnError("must start with postgresql:// (postgresql://user:password@host:port/database)")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise DsnError(f"not a URL (postgresql://user:password@host:port/database; {hint})") from None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if "@" in userinfo:
        raise DsnError(f"more than one '@' before the host ({hint})")
    if not at or not userinfo:
        raise DsnError(f"no user@ before the host (postgresql://user:password@host:port/database; {hint})")
    user, _, password = userinfo.partition(":")
    if hostport.endswith(":"):
        raise DsnError("no port after ':' (host:port, e.g. db.example.org:5432)")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise DsnError(f"the port is not a number ({hint})") from None
    if not host:
        raise DsnError(f"no host ({hint})")
    database = unquote(parts.path.removeprefix("/"))
    if not database or "/" in database:
        raise DsnError(f"no single database name after host:port/ ({hint})")
    ssl: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in DSN_SSL_PARAMETERS:
            raise DsnError(f"unknown parameter {key!r} (projmig reads sslmode, sslrootcert, sslcert, sslkey)")
        ssl[DSN_SSL_PARAMETERS[key]] = value
    if ssl.get("ssl", "prefer") not in SSL_MODES:
        raise DsnError(f"sslmode must be one of {', '.join(SSL_MODES)}")
    from sqlalchemy.engine import URL

    url = URL.create(
        "postgresql+asyncpg", username=unquote(user), password=unquote(password) if password else None,
        host=host, port=port, database=database,
    )
    return ParsedDsn(url=url, ssl=ssl)
