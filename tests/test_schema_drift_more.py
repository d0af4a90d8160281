"""`/mcp drift` on an app other than the platform: column types, check constraints, RLS policies, sequences,
views, extension versions, generated columns, unique constraints and index validity, between two databases
built by the same Drizzle migrations."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import message_text
from tests.schema_support import Migration, drizzle_migrate, execute

SHOP = """CREATE TYPE "public"."plan" AS ENUM('free', 'pro');
--> statement-breakpoint
CREATE TABLE "accounts" (
\t"id" serial PRIMARY KEY NOT NULL,
\t"email" varchar(120) NOT NULL,
\t"plan" "plan" DEFAULT 'free' NOT NULL,
\t"credits" integer DEFAULT 0,
\t"score" numeric(10, 2),
\tCONSTRAINT "accounts_credits_check" CHECK ("accounts"."credits" >= 0)
);
--> statement-breakpoint
CREATE TABLE "projects" (
\t"id" text PRIMARY KEY NOT NULL,
\t"account_id" integer NOT NULL,
\t"name" text NOT NULL
);
--> statement-breakpoint
ALTER TABLE "projects" ADD CONSTRAINT "projects_account_id_accounts_id_fk" FOREIGN KEY ("account_id") \
REFERENCES "public"."accounts"("id") ON DELETE cascade ON UPDATE no action;
--> statement-breakpoint
CREATE SEQUENCE "public"."invoice_no" INCREMENT BY 1 MINVALUE 1 START WITH 1000;
--> statement-breakpoint
CREATE VIEW "public"."pro_accounts" AS (select "id", "email" from "accounts" where "accounts"."plan" = 'pro');
--> statement-breakpoint
ALTER TABLE "projects" ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
CREATE POLICY "owner_only" ON "projects" AS PERMISSIVE FOR SELECT TO public USING (account_id > 0);
--> statement-breakpoint
CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH VERSION '1.9';
"""


def test_types_checks_policies_sequences_views_and_extension_versions(make_bot, make_empty_db):
    staging, production = make_empty_db(), make_empty_db()
    for url in (staging, production):
        drizzle_migrate(url, [Migration("0000_shop_init", 1_700_000_000_000, SHOP)])
    bot = make_bot({"staging": staging, "production": production})
    assert "identical" in bot.command("drift staging production").message()["text"]

    for statement in (
        "ALTER TABLE projects ALTER COLUMN name TYPE varchar(200)",
        "ALTER TABLE accounts ALTER COLUMN score TYPE numeric(12,2)",
        "ALTER TABLE accounts DROP CONSTRAINT accounts_credits_check,"
        " ADD CONSTRAINT accounts_credits_check CHECK (credits >= -10)",
        "DROP POLICY owner_only ON projects",
        "CREATE POLICY owner_only ON projects FOR ALL USING (account_id > 1)",
        "CREATE POLICY admins ON projects TO pg_monitor USING (true)",
        "ALTER TABLE projects DISABLE ROW LEVEL SECURITY",
        "ALTER SEQUENCE invoice_no INCREMENT BY 5",
        "CREATE SEQUENCE orphan_seq",
        "CREATE OR REPLACE VIEW pro_accounts AS select id, email, credits from accounts where plan = 'pro'",
        "ALTER EXTENSION pg_stat_statements UPDATE TO '1.10'",
    ):
        execute(production, statement)
    reply = bot.command("drift staging production").message()
    shown = message_text(reply)
    expected = [
        "`projects.name`: type `text` on staging, `character varying(200)` on production",
        "`accounts.score`: type `numeric(10,2)` on staging, `numeric(12,2)` on production",
        "check constraint `accounts_credits_check`: definition `CHECK ((credits &gt;= 0))` on staging, "
        "`CHECK ((credits &gt;= '-10'::integer))` on production",
        "policy `owner_only`: command `SELECT` on staging, `ALL` on production",
        "policy `owner_only`: using `(account_id &gt; 0)` on staging, `(account_id &gt; 1)` on production",
        "only on production: policy `admins`",
        "table `projects`: row level security `enabled` on staging, `disabled` on production",
        "sequence `invoice_no`: increment `1` on staging, `5` on production",
        "only on production: sequence `orphan_seq`",
        "*view pro_accounts*\n• view `pro_accounts`: definition `SELECT ",
        "extension `pg_stat_statements`: `1.9` on staging, `1.10` on production",
    ]
    for line in expected:
        assert line in shown, (line, shown)
    view_line = next(line for line in shown.splitlines() if line.startswith("• view `pro_accounts`"))
    assert view_line.count("credits") == 1 and view_line.index("credits") > view_line.index("on staging")
    assert reply["text"] == "staging vs production: 11 schema differences", shown
    # The extension's own views and functions are the extension's: never listed one by one.
    assert "pg_stat_statements_info" not in shown and "pg_stat_statements_reset" not in shown


def test_generated_columns_unique_constraints_and_an_invalid_index(make_bot, make_empty_db):
    domain = (
        'ALTER TABLE "accounts" ADD COLUMN "email_domain" text'
        " GENERATED ALWAYS AS (split_part(\"email\", '@', 2)) STORED;\n"
    )
    staging, production = make_empty_db(), make_empty_db()
    for url in (staging, production):
        drizzle_migrate(
            url,
            [Migration("0000_shop_init", 1_700_000_000_000, SHOP), Migration("0001_domain", 1_700_000_100_000, domain)],
        )
    execute(staging, "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email)")
    execute(staging, "CREATE UNIQUE INDEX CONCURRENTLY projects_name_key ON projects (name)")
    # On production the same index failed half way (duplicate names): it stays, INVALID.
    execute(production, "INSERT INTO accounts (email) VALUES ('a@example.org')")
    execute(production, "INSERT INTO projects VALUES ('p1', 1, 'same'), ('p2', 1, 'same')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        execute(production, "CREATE UNIQUE INDEX CONCURRENTLY projects_name_key ON projects (name)")
    execute(production, "ALTER TABLE accounts DROP COLUMN email_domain")
    execute(
        production,
        "ALTER TABLE accounts ADD COLUMN email_domain text GENERATED ALWAYS AS (split_part(email, '@', 1)) STORED",
    )

    bot = make_bot({"staging": staging, "production": production})
    reply = bot.command("drift staging production").message()
    shown = message_text(reply)
    expected = [
        "only on staging: unique constraint `accounts_email_key`",
        "index `projects_name_key`: `valid` on staging, `INVALID (a failed CREATE INDEX CONCURRENTLY)` on production",
        "`accounts.email_domain`: generated `split_part((email)::text, '@'::text, 2) (stored)` on staging, "
        "`split_part((email)::text, '@'::text, 1) (stored)` on production",
    ]
    for line in expected:
        assert line in shown, (line, shown)
    assert reply["text"] == "staging vs production: 3 schema differences", shown
