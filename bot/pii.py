"""Masking of personal data and scrubbing of secrets, in one place for every output."""

from __future__ import annotations

import re

EMAIL_RE = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"xox[abeposr]-[A-Za-z0-9\-]+"), "xox*-***"),
    (re.compile(r"xapp-[A-Za-z0-9\-]+"), "xapp-***"),
    (re.compile(r"\b(postgres(?:ql)?(?:\+\w+)?)://[^\s'\"]+", re.IGNORECASE), r"\1://***"),
    (re.compile(r"(?i)\b(password|passwd|pwd|secret|token)\s*([=:])\s*[^\s,;'\"]+"), r"\1\2***"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "AKIA***"),
    # Credentials in any other URL, Slack's response_url capability links, bearer tokens.
    (re.compile(r"\b([a-z][a-z0-9+.\-]*)://[^\s/@'\"]+@", re.IGNORECASE), r"\1://***@"),
    (re.compile(r"https://hooks\.slack\.com/[^\s'\"]+"), "https://hooks.slack.com/***"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*"), "Bearer ***"),
)


def mask_email(value: str | None) -> str:
    """`jane@example.com` -> `j***@example.com`; anything that is not an email -> `***`."""
    if not value:
        return "-"
    local, sep, domain = value.partition("@")
    if not sep or not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_emails_in(text: str) -> str:
    return EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def scrub(text: str) -> str:
    """Remove secrets and emails from free text bound for logs, Slack or the audit table."""
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return mask_emails_in(text)
