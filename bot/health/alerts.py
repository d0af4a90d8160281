"""The alert lifecycle: findings in, rows and Slack transitions out.

An alert is a row keyed by (stage, check, object) with a state: `pending` (seen, not yet
reported: the unreachable check wants two failures in a row), `firing`, `resolved`. A check
run hands in its findings and the checks it speaks for; this module turns them into
inserts, updates and resolutions in one bot-database transaction, together with the audit
row and the queued Slack call of every transition. Only transitions, content changes,
escalations and repeat reminders talk to Slack. A firing alert can be made to resolve only
after its finding has been absent `clear_after` runs in a row (the monitor passes
ALERT_CLEAR_AFTER_RUNS), so a value hovering at its threshold does not post, resolve and
post again.

The first post goes through the outbox, whose delivered row holds the message's channel
and ts. Updates (chat.update) and thread replies need that ts, so they are marked on the
row and sent by `sync`, which picks the ts up once the first post has been delivered.

The Block Kit of those messages is drawn by the renderer the Slack layer gives the book at
start-up (`set_renderer`; handlers/render_alerts.py). Nothing is recorded or sent before it
has one: a run started before the Slack layer is wired waits for it a little, then fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from bot import outbox
from bot.audit import AuditEntry, AuditLog
from bot.botdb import reading
from bot.config import Settings
from bot.health.alert_rows import AlertView, alert_view, alerts, inherited_snooze
from bot.health.checks import Finding
from bot.health.messages import AlertRenderer, material, snoozed
from bot.slacktext.truncate import truncate

log = logging.getLogger(__name__)

ACTOR = "mcp-ops"
UNREACHABLE_CHECK = "connectivity"
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
RENDERER_WAIT_S = 10.0  # a process wires its Slack layer right after starting its jobs


class AlertsNotRendered(RuntimeError):
    """The book was asked to record or send alerts before the Slack layer gave it a renderer."""


@dataclass
class Applied:
    fired: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    reminded: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    suppressed: bool = False


class AlertBook:
    def __init__(
        self, engine: Engine, settings: Settings, audit: AuditLog, notify: Callable[[], None] | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.audit = audit
        self._notify = notify or (lambda: None)
        # Told the ids of alerts just posted, escalated or reminded of (handlers/charts.py: a chart in the thread).
        self.on_announced: Callable[[list[int]], None] | None = None
        self._renderer: AlertRenderer | None = None
        self._rendering = threading.Event()

    def set_renderer(self, renderer: AlertRenderer) -> None:
        """Called by the Slack layer at start-up (handlers/render_alerts.py `install`)."""
        self._renderer = renderer
        self._rendering.set()

    @property
    def render(self) -> AlertRenderer:
        """The Slack layer's renderer, waiting a little for it; AlertsNotRendered if it never comes."""
        if self._renderer is None and not self._rendering.wait(RENDERER_WAIT_S):
            raise AlertsNotRendered(
                "alerts have no renderer: the Slack layer never called AlertBook.set_renderer "
                "(handlers/render_alerts.install)"
            )
        assert self._renderer is not None
        return self._renderer

    # -- findings in ------------------------------------------------------------------------

    def apply(
        self,
        stage: str,
        covers: Iterable[str],
        findings: list[Finding],
        *,
        fire_after: Mapping[str, int] | None = None,
        clear_after: Mapping[str, int] | None = None,
        holds: Iterable[tuple[str, str]] = (),
        also: Callable[[Connection], None] | None = None,
    ) -> Applied:
        """Record one run's findings for the checks in `covers`; `also` runs in the same transaction.

        `fire_after` / `clear_after`: runs in a row a check's finding must be seen / missed before it
        fires / resolves (default 1 each). `holds`: (check, object) of open alerts this run has no
        verdict on; they are neither seen nor missed.
        """
        render = self.render  # before any change: an alert is never recorded without a way to post it
        covered = set(covers)
        fire_after = fire_after or {}
        clear_after = clear_after or {}
        held = set(holds)
        result = Applied()
        with self.engine.begin() as conn:
            # Runs of different check groups on one stage may overlap; they take turns here.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('mcp-ops alerts:' || :s))"), {"s": stage})
            if also is not None:
                also(conn)
            now: datetime = conn.execute(select(func.now())).scalar_one()
            if UNREACHABLE_CHECK not in covered and self._unreachable(conn, stage):
                result.suppressed = True  # an unreachable stage speaks with one alert only
                return result
            open_rows = {
                (r.check_name, r.object): r
                for r in conn.execute(
                    select(alerts)
                    .where(
                        alerts.c.stage == stage,
                        alerts.c.state != "resolved",
                        alerts.c.check_name.in_(sorted(covered)),
                    )
                    .with_for_update()
                )
            }
            seen: set[tuple[str, str]] = set()
            for finding in findings:
                key = (finding.check, finding.object)
                if finding.check not in covered or key in seen:
                    continue
                seen.add(key)
                needed = fire_after.get(finding.check, 1)
                self._observe(conn, render, stage, finding, open_rows.get(key), needed, now, result)
            for key, row in open_rows.items():
                if key not in seen and key not in held:
                    self._clear(conn, row, clear_after.get(row.check_name, 1), now, result)
        if result.fired or result.resolved or result.reminded or result.escalated:
            self._notify()
        if (result.fired or result.escalated or result.reminded) and self.on_announced is not None:
            try:
                self.on_announced([*result.fired, *result.escalated, *result.reminded])
            except Exception:  # extras (charts) never fail the run that recorded the alerts
                log.warning("alert listener failed", exc_info=True)
        return result

    def _unreachable(self, conn: Connection, stage: str) -> bool:
        return (
            conn.execute(
                select(alerts.c.id).where(
                    alerts.c.stage == stage, alerts.c.check_name == UNREACHABLE_CHECK, alerts.c.state == "firing"
                )
            ).first()
            is not None
        )

    def _observe(
        self,
        conn: Connection,
        render: AlertRenderer,
        stage: str,
        f: Finding,
        row: Any,
        needed: int,
        now: datetime,
        result: Applied,
    ) -> None:
        # Cut where a reader can still read it: never inside a code span (a stray backtick would format the rest).
        content = {"severity": f.severity, "title": truncate(f.title, 500), "detail": truncate(f.detail, 2500)}
        content["advice"] = truncate(f.advice, 1500)
        content["actions"] = list(f.actions)
        if row is None:
            content.update(inherited_snooze(conn, stage, f.check, f.object[:300], now))
            row = conn.execute(
                insert(alerts)
                .values(
                    stage=stage,
                    check_name=f.check,
                    object=f.object[:300],
                    state="pending",
                    remind=f.remind,
                    consecutive=1,
                    first_seen_at=now,
                    last_seen_at=now,
                    **content,
                )
                .returning(alerts)
            ).one()
            changed = False
            escalated = False
        else:
            changed = material(row) != material(SimpleNamespace(**content)) or row.actions != content["actions"]
            told = row.announced or row.severity
            escalated = row.state == "firing" and SEVERITY_ORDER.get(f.severity, 9) < SEVERITY_ORDER.get(told, 9)
            # A run that missed it in between (without resolving it) breaks the streak.
            consecutive = 1 if row.absent else alerts.c.consecutive + 1
            row = conn.execute(
                update(alerts)
                .where(alerts.c.id == row.id)
                .values(consecutive=consecutive, absent=0, last_seen_at=now, remind=f.remind, **content)
                .returning(alerts)
            ).one()
        if row.state == "pending":
            if row.consecutive >= needed and now - row.first_seen_at >= timedelta(seconds=f.pending_s):
                self._fire(conn, render, row, now, result)
            return
        values: dict[str, Any] = {}
        if changed:
            values["needs_update"] = True
        if snoozed(row, now) and escalated and f.severity == "critical":
            # An escalation to critical breaks the snooze: of this alert, and of the resolved one with the
            # same key it inherited the snooze from (so the next firing is posted, not held).
            values.update(snoozed_until=None)
            conn.execute(
                update(alerts)
                .where(
                    alerts.c.stage == row.stage,
                    alerts.c.check_name == row.check_name,
                    alerts.c.object == row.object,
                    alerts.c.snoozed_until > now,
                )
                .values(snoozed_until=None)
            )
            self.audit_alert(conn, row, "snooze broken", {"by": "escalation to critical"})
        elif snoozed(row, now):
            if values:
                conn.execute(update(alerts).where(alerts.c.id == row.id).values(**values))
            return
        if row.held:  # it fired while snoozed; the snooze is over: post it now, as a first post
            conn.execute(update(alerts).where(alerts.c.id == row.id).values(held=False, **values))
            self._post(conn, render, row.id, now)
            result.fired.append(row.id)
            return
        repeat = self.settings.health.repeat_minutes_for(stage)
        due = row.last_notified_at is None or row.last_notified_at + timedelta(minutes=repeat) <= now
        if escalated:
            # The message is rewritten in place, which notifies nobody: say it in its thread, to the channel too.
            values.update(reply_due="escalated", last_notified_at=now, announced=f.severity)
            result.escalated.append(row.id)
        elif row.remind and repeat > 0 and due and not row.acknowledged_by:
            values.update(reply_due="reminder", last_notified_at=now, reminders=row.reminders + 1)
            result.reminded.append(row.id)
        if values:
            conn.execute(update(alerts).where(alerts.c.id == row.id).values(**values))

    def _fire(self, conn: Connection, render: AlertRenderer, row: Any, now: datetime, result: Applied) -> None:
        held = snoozed(row, now)
        row = conn.execute(
            update(alerts)
            .where(alerts.c.id == row.id)
            .values(state="firing", fired_at=now, held=held)
            .returning(alerts)
        ).one()
        self.audit_alert(conn, row, "firing", {"held": "snoozed"} if held else None)
        if held:
            return
        self._post(conn, render, row.id, now)
        result.fired.append(row.id)

    def _post(self, conn: Connection, render: AlertRenderer, alert_id: int, now: datetime) -> None:
        """The alert's first message, in the stage's alert channel (if it has one)."""
        row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).one()
        channel = self.settings.alert_channel_for(row.stage) or None
        row = conn.execute(
            update(alerts)
            .where(alerts.c.id == alert_id)
            .values(last_notified_at=now, channel=channel, announced=row.severity)
            .returning(alerts)
        ).one()
        if channel:
            post_id = outbox.enqueue(
                conn, "chat.postMessage", {"channel": channel, **render.message(row), "unfurl_links": False}
            )
            conn.execute(update(alerts).where(alerts.c.id == alert_id).values(post_outbox_id=post_id))

    def _clear(self, conn: Connection, row: Any, needed: int, now: datetime, result: Applied) -> None:
        if row.state == "pending":  # never reported, so there is nothing to resolve
            conn.execute(delete(alerts).where(alerts.c.id == row.id))
            return
        if row.absent + 1 < needed:  # missed, but not for long enough yet
            conn.execute(update(alerts).where(alerts.c.id == row.id).values(absent=row.absent + 1))
            return
        told = row.channel is not None
        row = conn.execute(
            update(alerts)
            .where(alerts.c.id == row.id)
            .values(state="resolved", resolved_at=now, needs_update=told, reply_due="resolved" if told else None)
            .returning(alerts)
        ).one()
        self.audit_alert(conn, row, "resolved")
        result.resolved.append(row.id)

    def audit_alert(
        self, conn: Connection, row: Any, outcome: str, extra: dict[str, Any] | None = None, actor: str = ACTOR
    ) -> None:
        detail: dict[str, Any] = {"alert_id": row.id, "severity": row.severity, "title": row.title, **(extra or {})}
        if outcome == "resolved" and row.fired_at is not None:
            detail["firing_s"] = int((row.resolved_at - row.fired_at).total_seconds())
        self.audit.record(
            AuditEntry(
                actor=actor,
                command="alert",
                stage=row.stage,
                args=f"{row.check_name} {row.object}",
                outcome=outcome,
                detail=detail,
            ),
            required=True,
            conn=conn,
        )

    # -- Slack out ---------------------------------------------------------------------------

    def sync(self, limit: int = 100) -> int:
        """Queue the updates and thread replies whose message ts is known; returns how many alerts."""
        done = 0
        render = self.render
        with self.engine.begin() as conn:
            now: datetime = conn.execute(select(func.now())).scalar_one()
            rows = conn.execute(
                select(alerts)
                .where((alerts.c.needs_update.is_(True)) | (alerts.c.reply_due.is_not(None)))
                .order_by(alerts.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                channel, ts = row.channel, row.ts
                if ts is None and row.post_outbox_id is not None:
                    posted = conn.execute(
                        select(outbox.outbox.c.delivered_at, outbox.outbox.c.dead_at, outbox.outbox.c.result).where(
                            outbox.outbox.c.id == row.post_outbox_id
                        )
                    ).first()
                    if posted is not None and posted.delivered_at is not None and (posted.result or {}).get("ts"):
                        channel = posted.result.get("channel") or channel
                        ts = posted.result["ts"]
                    elif posted is not None and posted.dead_at is None:
                        continue  # the first post is still on its way: next time
                if ts is None:
                    if channel and row.reply_due:
                        outbox.enqueue(
                            conn, "chat.postMessage", {"channel": channel, **render.orphan(row, row.reply_due)}
                        )
                elif channel:
                    if row.needs_update:
                        outbox.enqueue(conn, "chat.update", {"channel": channel, "ts": ts, **render.message(row)})
                    if row.reply_due:
                        reply = {"channel": channel, "thread_ts": ts, **render.reply(row, row.reply_due, now)}
                        if row.reply_due in ("reminder", "escalated"):
                            reply["reply_broadcast"] = True
                        outbox.enqueue(conn, "chat.postMessage", reply)
                conn.execute(
                    update(alerts)
                    .where(alerts.c.id == row.id)
                    .values(channel=channel, ts=ts, needs_update=False, reply_due=None)
                )
                done += 1
        if done:
            self._notify()
        return done

    # -- reading -----------------------------------------------------------------------------

    def open_alerts(self, stage: str | None = None, limit: int = 100) -> list[AlertView]:
        query = select(alerts).where(alerts.c.state == "firing").order_by(alerts.c.fired_at.desc()).limit(limit)
        if stage:
            query = query.where(alerts.c.stage == stage)
        with reading(self.engine) as conn:
            views = [alert_view(r) for r in conn.execute(query)]
        return sorted(views, key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.stage))

    def posted(self, alert_id: int) -> tuple[Any, str | None, str | None]:
        """The alert's row and where its first post landed (channel, ts), from the outbox until its ts is kept."""
        with reading(self.engine) as conn:
            row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).first()
            if row is None or row.ts:
                return row, (row.channel if row else None), (row.ts if row else None)
            if row.post_outbox_id is None:
                return row, None, None
            posted = conn.execute(
                select(outbox.outbox.c.result).where(outbox.outbox.c.id == row.post_outbox_id)
            ).scalar()
        result = posted or {}
        return row, result.get("channel"), result.get("ts")
