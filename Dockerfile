# syntax=docker/dockerfile:1
# Build stage: turn the project into wheels (ours and every dependency).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the installed wheels, a non-root user, no secrets.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /app mcpops
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels mcp-ops && rm -rf /wheels
USER mcpops
WORKDIR /app
ENV PORT=3000 PYTHONUNBUFFERED=1
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=2)"
CMD ["mcp-ops", "serve"]
