"""/mcp drift on two copies of the platform schema padded to 500 tables: time end to end, catalog query count.

Each copy holds the platform's tables plus generated ones shaped like the app's (text keys, a foreign key to
mcp_servers with an ON DELETE rule, an indexed column, a unique and a check constraint, an enum column with a
default; every 10th with a trigger, every 25th with an RLS policy), and a schema of another application that
DRIFT_IGNORE leaves out. The second copy differs in a few places, so the answer is a real diff. Targets: under
2 s for the whole signed slash command, and the same number of catalog queries per stage at 50 and 500 tables.
"""

from __future__ import annotations

import psycopg
from sqlalchemy import create_engine, event

from bench.common import BenchContext, best_of, ratio_line
from bot.config import load_settings, parse_database_url
from bot.console.client import SlackRequestSender
from bot.console.localslack import LocalSlack
from bot.pgcatalog import queries as catalog_queries
from bot.pgcatalog import read_snapshot
from bot.platform.schema import create_platform_schema
from bot.runtime import Runtime
from bot.schema.drift import drift, skip_for
from handlers.server import build_asgi, serve_in_thread

TABLES = 500
TARGET_S = 2.0
OTHER_APP_TABLES = 40
DRIFTS = (
    "CREATE INDEX pad_00007_note_idx ON pad_00007 (note)",
    "ALTER TABLE pad_00012 ALTER COLUMN note SET DEFAULT 'x'",
    "ALTER TABLE pad_00020 ALTER COLUMN server_id DROP NOT NULL",
    "ALTER TYPE pad_state ADD VALUE 'archived'",
    "ALTER TABLE pad_00030 DISABLE TRIGGER pad_00030_touch",
)


def _padding(count: int) -> str:
    return f"""
    CREATE TYPE pad_state AS ENUM ('new', 'active', 'done');
    CREATE FUNCTION pad_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
    CREATE SCHEMA other_app;
    DO $$ BEGIN
      FOR i IN 1..{count} LOOP
        EXECUTE format('CREATE TABLE pad_%1$s (id text PRIMARY KEY,
            server_id text NOT NULL REFERENCES mcp_servers(id) ON DELETE %2$s,
            state pad_state NOT NULL DEFAULT ''new'', note text, amount numeric(12,2) CHECK (amount >= 0),
            payload jsonb, created_at bigint, code text UNIQUE)', lpad(i::text, 5, '0'),
            CASE WHEN i % 3 = 0 THEN 'NO ACTION' ELSE 'CASCADE' END);
        EXECUTE format('CREATE INDEX pad_%1$s_server_idx ON pad_%1$s (server_id, created_at)', lpad(i::text, 5, '0'));
        IF i % 10 = 0 THEN
          EXECUTE format('CREATE TRIGGER pad_%1$s_touch BEFORE UPDATE ON pad_%1$s
              FOR EACH ROW EXECUTE FUNCTION pad_touch()', lpad(i::text, 5, '0'));
        END IF;
        IF i % 25 = 0 THEN
          EXECUTE format('ALTER TABLE pad_%1$s ENABLE ROW LEVEL SECURITY', lpad(i::text, 5, '0'));
          EXECUTE format('CREATE POLICY pad_%1$s_own ON pad_%1$s USING (server_id = current_user)',
              lpad(i::text, 5, '0'));
        END IF;
      END LOOP;
      FOR i IN 1..{OTHER_APP_TABLES} LOOP
        EXECUTE format('CREATE TABLE other_app.run_%s (id bigserial PRIMARY KEY, body jsonb)', i);
      END LOOP;
    END $$;
    """


def _build(ctx: BenchContext, name: str, tables: int, drifted: bool) -> str:
    url = ctx.cluster.create_database(name, drop=True)
    engine = create_engine(parse_database_url("bench", url))
    with engine.begin() as conn:
        create_platform_schema(conn)
    engine.dispose()
    with psycopg.connect(ctx.cluster.dsn(name), autocommit=True) as conn:
        platform = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
        conn.execute(_padding(tables - platform))  # type: ignore[arg-type]
        for statement in DRIFTS if drifted else ():
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute("ANALYZE")
    return url


def run(ctx: BenchContext) -> None:
    names = [f"bench_drift_{side}" for side in ("a", "b", "small_a", "small_b")]
    urls = [
        _build(ctx, names[0], TABLES, False),
        _build(ctx, names[1], TABLES, True),
        _build(ctx, names[2], 50, False),
        _build(ctx, names[3], 50, True),
    ]
    slack = LocalSlack().start()
    env = {
        "SLACK_SIGNING_SECRET": "bench-secret",
        "SLACK_BOT_TOKEN": "xoxb-bench",
        "SLACK_API_URL": slack.api_url,
        "BOT_DATABASE_URL": ctx.cluster.url("postgres"),
        "DATABASE_URL_STAGING": urls[0],
        "DATABASE_URL_PRODUCTION": urls[1],
        "DATABASE_URL_SMALLA": urls[2],
        "DATABASE_URL_SMALLB": urls[3],
        "DRIFT_IGNORE": "other_app",
        "HEALTH_CHECKS": "off",
    }
    runtime = Runtime(load_settings(env))
    runtime.start()
    try:
        stages = runtime.stages
        schema = runtime.settings.schema
        statements: list[str] = []
        for name in ("staging", "production", "smalla", "smallb"):
            event.listen(stages.get(name).engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

        report = drift(stages.get("staging"), stages.get("production"), schema)
        per_stage_big = len(statements) / 2
        statements.clear()
        small = drift(stages.get("smalla"), stages.get("smallb"), schema)
        per_stage_small = len(statements) / 2
        print(
            f"tables compared: {report.tables_compared} ({small.tables_compared} in the small pair); "
            f"differences found: {len(report.differences)} of {len(DRIFTS)} made ({len(small.differences)} small)"
        )
        print(
            f"catalog queries per stage: {report.queries['staging']} at {report.tables_compared} tables, "
            f"{small.queries['smalla']} at {small.tables_compared} tables; statements per stage incl. transaction "
            f"set-up: {per_stage_big:.0f} vs {per_stage_small:.0f} "
            f"({'flat' if per_stage_big == per_stage_small else 'NOT FLAT'})"
        )

        def ours() -> None:
            drift(stages.get("staging"), stages.get("production"), schema)

        raw_conns = [psycopg.connect(ctx.dsn(url), autocommit=True) for url in urls[:2]]
        skip = skip_for(schema)

        def raw() -> None:
            # The same catalog statements, one connection per stage, no Python around them (sequential).
            for conn in raw_conns:
                for query in catalog_queries.ALL:
                    conn.execute(str(query)).fetchall()  # type: ignore[arg-type]

        ours_t, raw_t = best_of(ours, repeat=5), best_of(raw, repeat=5)
        print(ratio_line("drift, domain call (both catalogs read at once, compared)", ours_t, raw_t))
        engine = stages.get("staging").engine
        with engine.connect() as conn:
            snapshot_t = best_of(lambda: read_snapshot(conn, skip), repeat=5)
        print(f"one stage's snapshot alone: {snapshot_t * 1000:.0f} ms")

        server = serve_in_thread(build_asgi(runtime))
        sender = SlackRequestSender(server.events_url, "bench-secret", response_base=slack.base_url)

        def command() -> None:
            response_url = sender.new_response_url()
            path = response_url.split(slack.base_url, 1)[1]
            sender.slash("drift staging production", user="UBENCH1", channel="CBENCH", response_url=response_url)
            slack.wait_for_call("response_url", lambda c: c.path == path, timeout=60)

        e2e = best_of(command, repeat=5)
        verdict = "met" if e2e < TARGET_S else "MISSED"
        print(
            f"drift, whole signed slash command on {report.tables_compared} tables (ack, both catalogs, compare, "
            f"reply): {e2e * 1000:.0f} ms (target < {TARGET_S:.0f} s: {verdict})"
        )
        server.stop()
        for conn in raw_conns:
            conn.close()
    finally:
        runtime.close()
        slack.stop()
        for name in names:
            ctx.cluster.drop_database(name)
