"""`make demo`'s embedded default: its own PostgreSQL, demo data for three stages, a console."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """\
/mcp find acme-analytics-mcp --stage dev
/mcp list --stage dev --limit 3
press More (17 left)
/mcp stats acme-analytics-mcp --stage staging
/mcp users acme-analytics-mcp --stage production --limit 2
/mcp frobnicate
as UDEMOVIEW1
/mcp audit
quit
"""


def test_demo_reaches_a_console_that_answers_from_demo_data():
    base = Path(tempfile.mkdtemp(prefix="mcp-ops-demo-"))
    base.chmod(0o755)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bot.cli", "--log-level", "WARNING", "demo", "--dir", str(base)],
            input=SCRIPT,
            capture_output=True,
            text=True,
            timeout=240,
            env={k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL_", "SLACK_", "BOT_"))},
            cwd=Path(__file__).parent.parent,
            check=False,
        )
        out = result.stdout
        assert result.returncode == 0, result.stderr[-2000:]
        assert "acting as UDEMOOPS1" in out
        assert "ID: `srv_big`" in out
        assert "20 servers on stage *dev*, newest first" in out
        assert "(4 to 6 of 20)" in out and "More (14 left)" in out
        assert ":bar_chart: `acme-analytics-mcp` on stage *staging*" in out
        assert "users of `acme-analytics-mcp` on stage *production* :lock:" in out
        assert "***@" in out and "@example.com" not in out.replace("***@example.com", "")
        assert "unknown command `frobnicate`" in out
        assert "`audit` is for operators and approvers only" in out
        assert "[#audit]" in out
        # The cluster was stopped on exit.
        assert not (base / "pg" / "data" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
