"""A PostgreSQL cluster of our own, for the demo, the tests and the benchmarks.

It uses the system's PostgreSQL binaries. `initdb` refuses to run as root, so when we are
root the cluster belongs to an unprivileged OS user (`postgres` by default) and every
server command runs through `runuser`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

PRELOAD = "pg_stat_statements"


class LocalPostgresError(RuntimeError):
    pass


def _bundled_bindir() -> str | None:
    """The binaries of the pip-installed `pgserver` bundle, the fallback when the system has none."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")


def find_bindir() -> Path | None:
    """The directory with initdb/pg_ctl/postgres: PG_BINDIR, the system's (newest first), else pgserver's."""
    candidates: list[str] = []
    env_dir = os.environ.get("PG_BINDIR")
    if env_dir:
        candidates.append(env_dir)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for name in ("pg_ctl", "initdb"):
        found = shutil.which(name)
        if found:
            candidates.append(str(Path(found).resolve().parent))
    bundled = _bundled_bindir()
    if bundled:
        candidates.append(bundled)
    for directory in candidates:
        if all((Path(directory) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    return None


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


FALLBACK_OS_USER = "mcp-ops-pg"


def _cluster_owner(preferred: str) -> str:
    """An unprivileged OS user to own clusters when we run as root (initdb refuses root).

    The `postgres` user that Debian's packages create is preferred; on a machine without it
    (the pip-installed bundle), a system user is created once.
    """
    for name in (preferred, FALLBACK_OS_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LocalPostgresError(
            f"running as root needs an unprivileged OS user to own the cluster; creating {FALLBACK_OS_USER!r} failed"
        )
    return FALLBACK_OS_USER


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """One cluster in `base_dir`, listening on 127.0.0.1:`port` with trust authentication."""

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        os_user: str = "postgres",
        fast_unsafe: bool = False,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_file = self.base_dir / "postgres.log"
        self.port_file = self.base_dir / "port"
        if port is None and self.port_file.exists():
            port = int(self.port_file.read_text().strip())
        self.port = port or free_port()
        self.fast_unsafe = fast_unsafe
        self.settings = settings or {}
        bindir = find_bindir()
        if bindir is None:
            raise LocalPostgresError(
                "PostgreSQL server binaries not found: install the postgresql and postgresql-contrib "
                "packages, or set PG_BINDIR"
            )
        self.bindir = bindir
        self.preload = PRELOAD if self._has_library(PRELOAD) else ""
        self.run_as = _cluster_owner(os_user) if os.geteuid() == 0 else None
        if self.run_as:
            self._owner = pwd.getpwnam(self.run_as)

    def _has_library(self, name: str) -> bool:
        result = (
            subprocess.run([str(self.bindir / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=False)
            if (self.bindir / "pg_config").exists()
            else None
        )
        libdir = Path(result.stdout.strip()) if result and result.returncode == 0 else self.bindir.parent / "lib"
        return (libdir / f"{name}.so").exists()

    # -- process control -------------------------------------------------------------

    def _cmd(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bindir / tool), *args]
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--", *command]
        return command

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._cmd(tool, *args), capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise LocalPostgresError(f"{tool} failed: {' / '.join(tail)}")
        return result

    def _chown(self, path: Path) -> None:
        if self.run_as:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        for path in (self.base_dir, self.socket_dir, self.data_dir):
            self._chown(path)
        self.data_dir.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.port_file.write_text(str(self.port))

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def start(self) -> None:
        if not self.initialized:
            self.init()
        if self.is_running():
            return
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "shared_preload_libraries": self.preload,
            "max_connections": "200",
            "shared_buffers": "256MB",
            **self.settings,
        }
        if self.preload:
            options["pg_stat_statements.track"] = "all"
        if self.fast_unsafe:
            options.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        opts = " ".join(f"-c {key}={value}" for key, value in options.items())
        if not self.log_file.exists():
            self.log_file.touch()
        self._chown(self.log_file)
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", opts, "-w", "-t", "60", "start")
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise LocalPostgresError(f"PostgreSQL did not accept connections on port {self.port}")

    def require_passwords(self, *, trusted: tuple[str, ...] = ("postgres",)) -> None:
        """Switch TCP logins to scram-sha-256, except `trusted` roles (so this class can still administer).

        Tests of credential rotation need a server that actually checks passwords.
        """
        lines = ["local all all trust"]
        lines += [f"host all {role} 127.0.0.1/32 trust" for role in trusted]
        lines += ["host all all 127.0.0.1/32 scram-sha-256", "host all all ::1/128 scram-sha-256"]
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        self._chown(hba)
        self._run("pg_ctl", "-D", str(self.data_dir), "reload")
        time.sleep(0.2)  # the postmaster re-reads pg_hba.conf asynchronously

    def stop(self, mode: str = "fast") -> None:
        if self.initialized and self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- databases -------------------------------------------------------------------

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def database_exists(self, name: str) -> bool:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def create_database(self, name: str, *, template: str | None = None, drop: bool = False) -> str:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if drop:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            conn.execute(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
