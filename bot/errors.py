"""Errors that carry a short message meant for the person who typed the command."""

from __future__ import annotations


class UserFacingError(Exception):
    """Its message is safe to show in Slack: no secret, no email, no traceback."""

    outcome = "error"

    def __init__(self, message: str, *, usage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class CommandError(UserFacingError):
    """The command text could not be understood."""

    outcome = "bad_input"


class PermissionDenied(UserFacingError):
    outcome = "denied"


class NotFound(UserFacingError):
    outcome = "not_found"


class StageError(UserFacingError):
    """No usable stage: unknown, missing, or protected where that is not allowed."""

    outcome = "bad_input"


class StageUnavailable(UserFacingError):
    """The stage database could not be reached or dropped the connection."""

    outcome = "unavailable"


class StageRefused(UserFacingError):
    """The stage's database refused the work: its role lacks a privilege."""

    outcome = "refused"


class QueryTimeout(UserFacingError):
    outcome = "timeout"


class RateLimited(UserFacingError):
    """Too many mutating commands from one person in the last minute."""

    outcome = "rate_limited"


class BotDatabaseUnreachable(UserFacingError):
    """The bot's own database (audit, approvals, outbox) did not answer."""

    outcome = "unavailable"


class ConcurrentChange(UserFacingError):
    """Another session changed the same rows (serialization failure or deadlock); nothing was changed."""

    outcome = "conflict"
