"""The Dockerfile's promises, and its install steps run for real in a fresh virtualenv.

No Docker engine runs here, so the test does what the image build does: the build stage's
context (its COPY lines) goes into an empty directory, `pip wheel` turns it into wheels, a
new virtualenv installs them with `--no-index --find-links` (no source tree, no network),
and that virtualenv's `mcp-ops serve` must answer /healthz.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from bot.console.process import ServeProcess
from tests.conftest import BOT_TOKEN, SIGNING_SECRET

ROOT = Path(__file__).resolve().parent.parent
SECRET_WORDS = re.compile(r"SECRET|TOKEN|PASSWORD|DATABASE_URL|SLACK_|AWS_", re.IGNORECASE)


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_the_dockerfile_is_multi_stage_slim_non_root_and_secret_free():
    build, runtime = dockerfile_stages()
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert runtime[0][1].startswith("python:3.11-slim")
    runtime_args = dict(runtime)
    user = runtime_args["USER"].split(":")[0]
    assert user not in ("0", "root")
    assert "/healthz" in runtime_args["HEALTHCHECK"]
    assert json.loads(runtime_args["CMD"]) == ["mcp-ops", "serve"]
    runs = " ".join(args for instruction, args in runtime if instruction == "RUN")
    assert "postgresql-client" in runs, "pg_dump is needed for full backups"
    assert "rm -rf /var/lib/apt/lists/*" in runs
    # Only wheels cross from the build stage; no source tree in the image.
    assert [args for instruction, args in runtime if instruction == "COPY"] == ["--from=build /wheels /wheels"]
    for instruction, args in build + runtime:
        if instruction in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRET_WORDS.search(n)], f"{instruction} {args} looks like a secret"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def pip_steps() -> tuple[list[str], list[str], list[str]]:
    """The build stage's COPY sources and the two pip commands, as the Dockerfile spells them."""
    build, runtime = dockerfile_stages()
    sources = [src for instruction, args in build if instruction == "COPY" for src in args.split()[:-1]]
    wheel = next(args for instruction, args in build if instruction == "RUN" and "pip wheel" in args)
    install = next(args for instruction, args in runtime if instruction == "RUN" and "pip install" in args)
    wheel_argv = shlex.split(wheel)
    install_argv = shlex.split(re.search(r"\S*pip install [^&]*", install).group(0))
    return sources, wheel_argv, install_argv


def test_the_image_install_steps_give_a_working_mcp_ops_serve(tmp_path, bot_db_url, stage_db, fake_slack):
    sources, wheel_argv, install_argv = pip_steps()
    assert wheel_argv[:2] == ["pip", "wheel"] and "--no-index" in install_argv

    context = tmp_path / "src"
    context.mkdir()
    for source in sources:
        path = ROOT / source
        target = context / path.name
        if path.is_dir():
            shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, target)
    wheels = tmp_path / "wheels"
    wheel_args = [a.replace("/wheels", str(wheels)) for a in wheel_argv[2:] if a != "--no-cache-dir"]
    wheel_args = [str(context) if a == "." else a for a in wheel_args]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", *wheel_args], check=True, cwd=context)
    assert any(p.name.startswith("mcp_ops-") for p in wheels.iterdir())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install_args = [a.replace("/wheels", str(wheels)) for a in install_argv[2:]]
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *install_args], check=True, cwd=tmp_path)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import bot, handlers; print(bot.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv)), "the package must come from the virtualenv, not the source tree"
    # Current clients ship in the image: a pg_dump for servers up to PostgreSQL 18 (full backups pick it).
    dumper = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from bot.localpg import pick_installation as p; print(p(at_least=18, tools=('pg_dump',)).tool('pg_dump'))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert dumper.startswith(str(venv)), dumper

    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": fake_slack.api_url,
        "BOT_DATABASE_URL": bot_db_url,
        "DATABASE_URL_DEV": stage_db.url,
    }
    server = ServeProcess(env, tmp_path / "serve.log", command=[str(venv / "bin" / "mcp-ops")], cwd=tmp_path)
    try:
        server.start(timeout=60)
        assert server.get("/healthz") == (200, "ok")
        status, report = server.get_json("/readyz")
        assert (status, report["bot_database"]) == (200, "ok")
        assert report["stages"]["dev"].startswith("ok")
    finally:
        assert server.stop() == 0
