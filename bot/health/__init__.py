"""Scheduled health checks of the stage databases and the alerts they raise.

Checks read a stage (read-only, short time limits, their own application_name) and
return findings; the alert lifecycle turns findings into rows in the bot database and only
transitions talk to Slack, through the outbox.
"""
