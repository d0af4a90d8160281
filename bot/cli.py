"""The `mcp-ops` command line: serve, socket, console, demo, demo-data, check-config."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import ConfigError, Settings, load_settings
from bot.logs import configure_file_logging, configure_logging
from bot.schema.drizzle import MigrationsFolderError, read_folder
from bot.slacktext.words import plural


def _fail(message: str) -> int:
    print(f"mcp-ops: {message}", file=sys.stderr)
    return 2


def _settings(**kwargs: bool) -> Settings:
    return load_settings(**kwargs)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from bot.runtime import Runtime
    from handlers.server import serve

    settings = _settings()
    drained = serve(Runtime(settings), host=args.host, port=args.port, graceful_timeout=args.graceful_timeout)
    if not drained:
        # Work still running past the graceful timeout is cut off here (its transactions roll back in
        # PostgreSQL); waiting for its threads at interpreter exit would let it go on.
        logging.shutdown()
        os._exit(0)
    return 0


def cmd_socket(args: argparse.Namespace) -> int:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from bot.runtime import Runtime
    from handlers.app import build_app

    settings = _settings()
    if not settings.app_token:
        raise ConfigError("SLACK_APP_TOKEN is missing (Socket Mode needs an xapp- token)")
    runtime = Runtime(settings)
    runtime.start()
    try:
        SocketModeHandler(build_app(runtime), settings.app_token).start()
    finally:
        runtime.close()
    return 0


def _quiet_logs(path: Path, level: str) -> None:
    """Console and demo: JSON logs to a file, warnings on the screen, and one line saying where."""
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    configure_file_logging(path, level)
    print(f"Logs: {path} (only warnings are shown here)")


def _console_log_file() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mcp-ops" / "console.log"


def _run_console(settings: Settings, user: str, channel: str, hint: str) -> int:
    from bot.console.repl import Console
    from bot.runtime import BotDatabaseUnavailable

    try:
        console = Console(settings, user=user, channel=channel)
    except BotDatabaseUnavailable as exc:
        return _fail(f"{exc}: start PostgreSQL there or point BOT_DATABASE_URL at one (`make demo` brings its own)")
    try:
        console.loop(intro=hint)
    except KeyboardInterrupt:
        pass
    finally:
        console.close()
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from bot.console.repl import try_these

    settings = _settings(require_slack=False)
    _quiet_logs(Path(args.log_file) if args.log_file else _console_log_file(), args.log_level)
    user = args.user or next(iter(sorted(settings.operators)), "UCONSOLE1")
    return _run_console(settings, user, args.channel, try_these(settings.stage_names()[0]))


def cmd_demo(args: argparse.Namespace) -> int:
    import psycopg
    from sqlalchemy.exc import SQLAlchemyError

    from bot.console.repl import try_these
    from bot.demo import DEMO_APPROVER, DEMO_OPERATOR, DEMO_SLUG, DEMO_VIEWER, prepare_demo, stop_demo
    from bot.localpg import LocalPostgresError

    base = Path(args.dir)
    _quiet_logs(Path(args.log_file) if args.log_file else base / "mcp-ops.log", args.log_level)
    try:
        cluster, env = prepare_demo(base, reset=args.reset)
    except (LocalPostgresError, OSError) as exc:
        return _fail(f"the demo's PostgreSQL did not start: {exc} (`mcp-ops demo --reset` starts afresh)")
    except (psycopg.Error, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return _fail(f"the demo's data could not be loaded: {reason} (`mcp-ops demo --reset` starts afresh)")
    try:
        settings = load_settings(env, require_slack=False)
        print(
            f"Demo users: {DEMO_OPERATOR} (operator, acting now), {DEMO_APPROVER} (approver), "
            f"{DEMO_VIEWER} (read-only). Stages: dev, staging, production (protected)."
        )
        print(
            "Production is one Drizzle migration behind the others: `/mcp migrations`, `/mcp drift staging production`."
        )
        return _run_console(settings, args.user or DEMO_OPERATOR, args.channel, try_these("dev", DEMO_SLUG))
    finally:
        if not args.keep:
            stop_demo(cluster)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from bot.demo import build_platform_database
    from bot.platform.demo_data import BENCH_SPEC, DatasetSpec

    base = BENCH_SPEC if args.bench else DatasetSpec()
    overrides = {
        "big_tool_calls": args.tool_calls,
        "big_sessions": args.sessions,
        "big_users": args.users,
        "big_completions": args.completions,
        "small_servers": args.small_servers,
    }
    spec = DatasetSpec(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    # Migrated as `make demo` migrates its stages (Drizzle, bot/platform/drizzle, with drizzle-orm's bookkeeping
    # table), so the database looks like a migrated platform database; `--migrations-behind N` leaves the newest N out.
    behind = args.migrations_behind
    if behind < 0 or behind >= len(migration_tags()):
        print(f"mcp-ops: --migrations-behind must be 0 to {len(migration_tags()) - 1}", file=sys.stderr)
        return 2
    build_platform_database(args.url, spec, pending_migrations=behind)
    tags = migration_tags()
    print(f"migrated: {', '.join(tags[: len(tags) - behind])}" + (f" ({behind} pending)" if behind else ""))
    print(f"loaded: {spec}")
    return 0


def migration_tags() -> list[str]:
    """The platform's Drizzle migrations `demo-data` applies, oldest first."""
    from bot.platform.migrate import FOLDER

    return [m.name for m in read_folder(FOLDER)[1]]


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(require_slack=not args.no_slack)
    print(f"stages: {', '.join(settings.stage_names())} (protected: {', '.join(sorted(settings.protected_stages))})")
    print(f"operators: {len(settings.operators)}, approvers: {len(settings.approvers)}")
    print(f"channel bindings: {len(settings.channel_stages)}")
    sources = ", ".join(f"{name} ({cfg.source_detail})" for name, cfg in sorted(settings.stages.items()))
    print(f"stage credentials: {sources}")
    print(f"backups: {settings.backup.destination}")
    schema = settings.schema
    folder = (
        str(schema.migrations_dir) if schema.migrations_dir else "no MIGRATIONS_DIR (stages compared with each other)"
    )
    folder_problem = None
    if schema.migrations_dir:
        try:
            layout, local = read_folder(schema.migrations_dir)
            folder += f" ({plural(len(local), 'migration')}, {'journal' if layout == 'journal' else 'one folder each'})"
        except MigrationsFolderError as exc:
            folder_problem = exc.message
    reference = schema.reference_stage or "none"
    print(
        f"migrations: {folder}; table {schema.migrations_schema}.{schema.migrations_table}; "
        f"reference stage {reference}, lag alert after {schema.lag_alert_hours} h"
    )
    if folder_problem:
        print(f"warning: {folder_problem}")
    edge = settings.edge
    if edge.team_ids:
        print(f"workspaces: {', '.join(sorted(edge.team_ids))}")
    else:
        print(
            "warning: SLACK_TEAM_ID is not set: a correctly signed request from any workspace of this app is served;"
            " set it to your workspace's team ID (or your organisation's enterprise ID)"
        )
    metrics_where = f"port {edge.metrics_port}" if edge.metrics_port else "the main port"
    print(f"metrics: on {metrics_where}, {'bearer token required' if edge.metrics_token else 'no token'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-ops", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve Slack over HTTP (uvicorn)")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))  # noqa: S104 - a server listens
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    serve.add_argument("--graceful-timeout", type=int, default=120)
    serve.set_defaults(func=cmd_serve)

    socket = sub.add_parser("socket", help="connect to Slack in Socket Mode (SLACK_APP_TOKEN)")
    socket.set_defaults(func=cmd_socket)

    console = sub.add_parser("console", help="a local REPL that drives the bot like Slack does")
    console.add_argument("--user", help="acting Slack user id (default: the first operator)")
    console.add_argument("--channel", default="CCONSOLE")
    console.add_argument("--log-file", help="where the logs go (default: ~/.cache/mcp-ops/console.log)")
    console.set_defaults(func=cmd_console)

    demo = sub.add_parser("demo", help="local PostgreSQL with demo data for three stages, then the console")
    demo.add_argument("--dir", default=os.environ.get("MCP_OPS_DEMO_DIR", ".demo"))
    demo.add_argument("--reset", action="store_true", help="throw away the demo cluster and start afresh")
    demo.add_argument("--keep", action="store_true", help="leave PostgreSQL running on exit")
    demo.add_argument("--user", help="acting Slack user id")
    demo.add_argument("--channel", default="CDEMO")
    demo.add_argument("--log-file", help="where the logs go (default: DIR/mcp-ops.log)")
    demo.set_defaults(func=cmd_demo)

    data = sub.add_parser(
        "demo-data", help="migrate the platform schema (Drizzle) and load generated data into an empty database"
    )
    data.add_argument("--url", required=True, help="postgresql:// URL of an empty database")
    data.add_argument("--bench", action="store_true", help="the benchmark size (1,000,000 tool calls)")
    data.add_argument("--tool-calls", type=int)
    data.add_argument("--sessions", type=int)
    data.add_argument("--users", type=int)
    data.add_argument("--completions", type=int)
    data.add_argument("--small-servers", type=int)
    data.add_argument(
        "--migrations-behind",
        type=int,
        default=0,
        metavar="N",
        help="leave the newest N platform migrations unapplied (default 0: all, as `make demo`'s dev stage)",
    )
    data.set_defaults(func=cmd_demo_data)

    check = sub.add_parser("check-config", help="validate the environment and summarise it (no secrets)")
    check.add_argument("--no-slack", action="store_true")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
