"""A person's rows in an `anonymise`-mode table whose email column is UNIQUE, live and in an older scoped
backup: the erasure, the restore of that backup and a purge all give each row its own token, so nothing
collides and the person does not come back."""

from __future__ import annotations

from bot.erasure.identity import email_digest, row_token
from tests.backups.test_erasure_backups import EMAIL, delete_small_server_with_backup, forget_pat, pat_db  # noqa: F401
from tests.conftest import StageDb

NEWSLETTER = """
CREATE TABLE newsletter (
    id text PRIMARY KEY,
    server_id text NOT NULL REFERENCES mcp_servers(id) ON DELETE CASCADE,
    email varchar(320) NOT NULL UNIQUE,
    name text
);
INSERT INTO newsletter VALUES ('nl_s3', 'srv_s3', 'Pat.Smith@example.org', 'Pat'),
 ('nl_s1', 'srv_s1', ' pat.smith@EXAMPLE.org', 'Pat'), ('nl_other', 'srv_s3', 'sam@example.org', 'Sam');
"""
ENV = {
    "ERASURE_COLUMNS": "support_requests.email,newsletter.email",
    "ERASURE_MODE_newsletter": "anonymise",
    "ERASURE_CLEAR_COLUMNS": "newsletter.name",
}


def _tokens() -> dict[str, str]:
    return {key: row_token(email_digest(EMAIL), key) for key in ("nl_s1", "nl_s3")}


def test_a_restore_of_an_older_backup_anonymises_its_unique_rows_again(make_bot, pat_db: StageDb):  # noqa: F811
    pat_db.execute(NEWSLETTER)
    bot = make_bot({"dev": pat_db.url}, **ENV)
    request_id = delete_small_server_with_backup(bot, pat_db)  # nl_s3 and nl_other go into the backup
    receipt = forget_pat(bot, purge=False)
    assert receipt.result.verified, receipt.result.verification
    tokens = _tokens()
    assert pat_db.rows("SELECT id, email, name FROM newsletter") == [("nl_s1", tokens["nl_s1"], None)]
    [held] = receipt.backups
    assert held.rewritten.get("public.newsletter") == 1, held

    reply = bot.command(f"restore {request_id} --stage dev").text(timeout=60)
    assert "Restored backup" in reply and f"erasure #{receipt.erasure_id}" in reply, reply
    assert pat_db.rows("SELECT id, email, name FROM newsletter ORDER BY id") == [
        ("nl_other", "sam@example.org", "Sam"),
        ("nl_s1", tokens["nl_s1"], None),
        ("nl_s3", tokens["nl_s3"], None),
    ]


def test_a_purge_rewrites_unique_rows_with_their_own_token(make_bot, pat_db: StageDb):  # noqa: F811
    pat_db.execute(NEWSLETTER)
    bot = make_bot({"dev": pat_db.url}, **ENV)
    request_id = delete_small_server_with_backup(bot, pat_db)
    receipt = forget_pat(bot, purge=True)
    [purged] = receipt.backups
    assert purged.action == "rewritten", purged
    reply = bot.command(f"restore {request_id} --stage dev").text(timeout=60)
    assert "Restored backup" in reply, reply
    tokens = _tokens()
    assert pat_db.rows("SELECT id, email FROM newsletter WHERE id LIKE 'nl_s%' ORDER BY id") == [
        ("nl_s1", tokens["nl_s1"]),
        ("nl_s3", tokens["nl_s3"]),
    ]
