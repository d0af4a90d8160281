"""`make demo`'s embedded default: its own PostgreSQL, demo data for three stages, a quiet console.

The demo runs from a checkout in a mode-700 directory, as a root user cloning into their home directory
would: the cluster's OS user cannot enter it, so the cluster must live elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

from bot.demo import STAGES, demo_cluster_dir
from bot.localpg import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """\
/mcp find acme-analytics-mcp --stage dev
/mcp list --stage dev --limit 3
press More (17 left)
press More
/mcp stats acme-analytics-mcp --stage staging
/mcp users acme-analytics-mcp --stage production --limit 2
/mcp frobnicate
as UDEMOVIEW1
/mcp audit
as UDEMOOPS1
/mcp migrations
/mcp drift staging production
quit
"""
JSON_LOG_LINE = re.compile(r'^\s*\{"ts":', re.MULTILINE)


def run_cli(*args: str, cwd: Path, script: str = "quit\n", env: dict[str, str] | None = None):
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL_", "SLACK_", "BOT_", "PG_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=240,
        env={**clean_env, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd,
        check=False,
    )


def assert_quiet_with_hint(result: subprocess.CompletedProcess[str], log_file: Path) -> None:
    """No log lines on the screen, one line saying where they went, the three-line hint first."""
    assert not JSON_LOG_LINE.search(result.stdout) and not JSON_LOG_LINE.search(result.stderr), result.stderr[-2000:]
    assert "Adding job" not in result.stdout + result.stderr
    assert f"Logs: {log_file} (only warnings are shown here)" in result.stdout
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Try these:"))
    assert lines[start + 1].strip().startswith("/mcp") and "help" in lines[start + 2]
    assert lines[start + 3].startswith("mcp-ops console: acting as")
    assert JSON_LOG_LINE.search(log_file.read_text()), "the logs went to the file"


def test_demo_starts_from_a_mode_700_checkout_and_answers_from_demo_data():
    checkout = Path(tempfile.mkdtemp(prefix="mcp-ops-demo-"))
    checkout.chmod(0o700)
    cluster_dir = demo_cluster_dir(checkout / ".demo")
    if os.geteuid() == 0:
        # The cluster belongs to an unprivileged OS user that cannot enter the checkout.
        assert checkout not in cluster_dir.parents
    else:
        print("not root: the cluster runs as this user, who can enter the mode-700 checkout; data stays in it")
        assert cluster_dir == checkout.resolve() / ".demo" / "pg"
    try:
        result = run_cli("--log-level", "INFO", "demo", cwd=checkout, script=SCRIPT)
        out = result.stdout
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert_quiet_with_hint(result, checkout.resolve() / ".demo" / "mcp-ops.log")
        assert f"in {cluster_dir}, port" in out
        assert "acting as UDEMOOPS1" in out
        assert "ID: `srv_big`" in out
        assert "20 servers on stage *dev*, newest first" in out
        assert "(4 to 6 of 20)" in out and "More (14 left)" in out
        assert "(7 to 9 of 20)" in out  # `press More` finds the one button whose label starts so
        assert ":bar_chart: `acme-analytics-mcp` on stage *staging*" in out
        # The chart is drawn after the numbers; the console waits for it before reading the next command.
        stats = out.split("> /mcp stats acme-analytics-mcp --stage staging", 1)[1].split("\n> ", 1)[0]
        assert "[added to the reply in CDEMO]\n  [chart: Daily usage of acme-analytics-mcp on stage staging" in stats
        assert "users of `acme-analytics-mcp` on stage *production* :lock:" in out
        assert "***@" in out and "@example.com" not in out.replace("***@example.com", "")
        assert "unknown command `frobnicate`" in out
        assert "`audit` is for operators and approvers only" in out
        assert "[#audit]" in out
        assert "in CDEMOALERTS]" not in out
        # The stages were migrated by Drizzle (the demo's MIGRATIONS_DIR): production is one migration behind.
        migrations = out.split("> /mcp migrations\n", 1)[1].split("\n> ", 1)[0]
        assert "*dev*: newest `0002_support_triage`" in migrations and "every migration applied" in migrations
        assert "*production* :lock:: newest `0001_session_client_name`" in migrations, migrations
        assert "1 pending · production is 1 behind staging" in migrations
        assert "0002_support_triage  applied  applied  pending" in migrations
        drift = out.split("> /mcp drift staging production\n", 1)[1].split("\n> ", 1)[0]
        assert "2 differences in 2 places: mcp_tool_calls (1), support_requests (1)" in drift, drift
        assert "*table mcp_tool_calls*\n• only on staging: index `mcp_tool_calls_created_idx`" in drift
        assert (
            "*table support_requests*\n• `support_requests.priority`: default `'low'::support_request_priority`"
            " on staging, `'medium'::support_request_priority` on production"
        ) in drift  # alerts of the demo data are one line each, not whole messages
        # The cluster was stopped on exit; a second start reuses it, --reset rebuilds it.
        assert (cluster_dir / "data" / "PG_VERSION").exists()
        assert not (cluster_dir / "data" / "postmaster.pid").exists()
        again = run_cli("demo", cwd=checkout)
        assert again.returncode == 0 and "creating stage" not in again.stdout, again.stderr[-2000:]
        # A first start interrupted while loading a stage (Ctrl-C), and its port taken meanwhile: the next
        # start loads that stage again on another port, instead of serving an empty database.
        cluster = LocalPostgres(cluster_dir)
        cluster.start()
        cluster.create_database("mcp_production", drop=True)  # created, its load rolled back
        cluster.stop()
        with socket.socket() as taken:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its closed connections may linger
            taken.bind(("127.0.0.1", cluster.port))
            taken.listen()
            resumed = run_cli("demo", cwd=checkout, script="/mcp list --limit 2 --stage production\nquit\n")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "creating stage production" in resumed.stdout and "creating stage dev" not in resumed.stdout
        servers = STAGES["production"].small_servers + 1
        assert f"{servers} servers on stage *production*" in resumed.stdout, resumed.stdout[-2000:]
        assert f"port {cluster.port}" not in resumed.stdout
        # Another session of the demo (a second terminal) keeps the bot's database and the cluster it uses.
        cluster = LocalPostgres(cluster_dir)  # on the port the last start chose
        cluster.start()
        with psycopg.connect(cluster.dsn("mcp_ops_bot"), autocommit=True) as other:
            other.execute("CREATE TABLE other_session_was_here ()")
            alongside = run_cli("demo", cwd=checkout)
            assert alongside.returncode == 0, alongside.stderr[-2000:]
            assert other.execute("SELECT to_regclass('other_session_was_here') IS NOT NULL").fetchone()[0]
            assert cluster.is_running()
        cluster.stop()
        reset = run_cli("demo", "--reset", cwd=checkout)
        assert reset.returncode == 0 and "creating stage dev with demo data" in reset.stdout, reset.stderr[-2000:]
    finally:
        LocalPostgres(cluster_dir).destroy()
        if checkout not in cluster_dir.parents:
            shutil.rmtree(cluster_dir.parent, ignore_errors=True)  # the checkout's folder in the shared cache
        shutil.rmtree(checkout, ignore_errors=True)


def test_a_demo_that_cannot_start_says_what_to_do_in_one_line():
    checkout = Path(tempfile.mkdtemp(prefix="mcp-ops-demo-fail-"))
    checkout.chmod(0o700)
    try:
        result = run_cli("demo", cwd=checkout, env={"PG_MAJOR": "99"})
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("mcp-ops: the demo's PostgreSQL did not start: PostgreSQL 99")
        assert "install the postgresql and postgresql-contrib packages" in line
    finally:
        shutil.rmtree(checkout, ignore_errors=True)


def test_console_is_quiet_logs_to_a_file_and_starts_with_a_hint(stage_db, bot_db_url, tmp_path):
    log_file = tmp_path / "console.log"
    env = {"DATABASE_URL_DEV": stage_db.url, "BOT_DATABASE_URL": bot_db_url, "OPERATORS": "UOPS1"}
    script = "/mcp list --stage dev --limit 2\nhelp\nquit\n"
    result = run_cli(
        "--log-level", "DEBUG", "console", "--log-file", str(log_file), cwd=tmp_path, script=script, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert_quiet_with_hint(result, log_file)
    assert "/mcp list --limit 5 --stage dev" in result.stdout.split("Try these:", 1)[1].splitlines()[0]
    assert "servers on stage *dev*" in result.stdout
    assert result.stderr == ""


def test_demo_data_loads_under_a_name_and_a_statement_and_lock_timeout(pg):
    from sqlalchemy import text

    from bot.demo import demo_data_engine
    from tests.conftest import unique_name

    name = unique_name("demodata")
    url = pg.create_database(name)
    engine = demo_data_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW application_name")).scalar() == "mcp-ops/demo-data"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "30min"
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "5s"
    finally:
        engine.dispose()
        pg.drop_database(name)
