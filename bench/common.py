"""Shared benchmark plumbing: one local cluster, the big dataset built once, timing helpers."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue as queues
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bot.config import load_settings
from bot.demo import build_platform_database
from bot.localpg import LocalPostgres
from bot.platform.demo_data import BENCH_SPEC, GENERATOR_VERSION, DatasetSpec
from bot.platform.schema import MISSING_FK_INDEXES
from bot.stages import Stage, StageRegistry

BENCH_DIR = Path(os.environ.get("MCP_OPS_BENCH_DIR", Path(__file__).parent / ".data"))
# `python -m bench --small`: the demo-size dataset (20,000 tool calls), to check that every benchmark
# still runs end to end in seconds; its figures are not the ones the targets are about.
SMALL_SPEC = DatasetSpec()


class BenchContext:
    """A persistent cluster under bench/.data; the big dataset is built once and cloned per use.

    `spec` is the dataset that clone() and template() use when a benchmark names none.
    """

    def __init__(self, spec: DatasetSpec = BENCH_SPEC) -> None:
        self.cluster = LocalPostgres(BENCH_DIR / "pg")
        self.spec = spec
        self._clones: list[str] = []

    def __enter__(self) -> BenchContext:
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        BENCH_DIR.chmod(0o755)
        self.cluster.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self._clones:
            self.cluster.drop_database(name)
        self.cluster.stop()

    def template(self, spec: DatasetSpec | None = None) -> str:
        """The name of a template database holding `spec`, built on first use (about a minute)."""
        spec = spec or self.spec
        key = repr((GENERATOR_VERSION, sorted(spec.__dict__.items())))
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        name = f"bench_tpl_{digest}"
        if not self.cluster.database_exists(name):
            print(f"building the benchmark dataset ({spec.big_tool_calls:,} tool calls) once ...", flush=True)
            started = time.perf_counter()
            fixed = DatasetSpec(**{**spec.__dict__, "now_ms": int(time.time() * 1000)})
            self.cluster.create_database(f"{name}_building", drop=True)
            build_platform_database(self.cluster.url(f"{name}_building"), fixed)
            with psycopg.connect(self.cluster.dsn("postgres"), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(f"{name}_building"), sql.Identifier(name)
                    )
                )
            print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
        return name

    def clone(self, label: str, *, spec: DatasetSpec | None = None, with_fk_indexes: bool = False) -> str:
        """A fresh copy of the big dataset; with_fk_indexes adds the two indexes the schema lacks."""
        name = f"bench_{label}_{os.getpid()}"
        url = self.cluster.create_database(name, template=self.template(spec), drop=True)
        self._clones.append(name)
        with psycopg.connect(self.cluster.dsn(name), autocommit=True) as conn:
            if with_fk_indexes:
                add_fk_indexes(conn)
            conn.execute("VACUUM ANALYZE")
        return url

    def dsn(self, url_or_name: str) -> str:
        return self.cluster.dsn(url_or_name.rsplit("/", 1)[-1])


def add_fk_indexes(conn: psycopg.Connection[Any]) -> None:
    """The two foreign-key indexes the platform schema lacks (platform-schema.md)."""
    for index, table, column in MISSING_FK_INDEXES:
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(index), sql.Identifier(table), sql.Identifier(column)
            )
        )


def best_of(func: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of `repeat` runs after `warmup` runs (caches warm for both sides alike)."""
    for _ in range(warmup):
        func()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _child(func: Callable[[], Any], queue: Any) -> None:
    try:
        result = func()
    except BaseException as exc:
        # Tell the parent, which would otherwise wait for a result forever.
        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-6)}"))
        return
    queue.put(("ok", (result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))


def peak_rss_mb(func: Callable[[], Any]) -> tuple[Any, float]:
    """Run `func` in a forked child and return (its result, the child's peak resident memory in MB).

    A failure in the child is raised here, so the benchmark fails instead of hanging.
    """
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(func, queue))
    process.start()
    while True:
        try:
            kind, payload = queue.get(timeout=1)
            break
        except queues.Empty:
            if process.is_alive():
                continue
            try:  # it may have answered just before exiting
                kind, payload = queue.get(timeout=1)
                break
            except queues.Empty:
                raise RuntimeError(f"the measured child process exited ({process.exitcode}) without a result") from None
    process.join()
    if kind == "error":
        raise RuntimeError(f"in the measured child process: {payload}")
    result, rss_kb = payload
    return result, rss_kb / 1024


def ratio_line(label: str, ours: float, raw: float, target: float | None = None) -> str:
    ratio = ours / raw if raw > 0 else float("inf")
    verdict = ""
    if target is not None:
        verdict = f"  (target <= {target}x: {'met' if ratio <= target else 'MISSED'})"
    return f"{label}: mcp-ops {ours * 1000:.1f} ms vs raw SQL {raw * 1000:.1f} ms -> ratio {ratio:.2f}x{verdict}"


def bench_stage(ctx: BenchContext, url: str) -> Stage:
    """A stage named `bench` on `url`, configured as the bot configures its stages."""
    settings = load_settings(
        {
            "BOT_DATABASE_URL": ctx.cluster.url("postgres"),
            "DATABASE_URL_BENCH": url,
            "STAGE_STATEMENT_TIMEOUT_MS": "600000",
        },
        require_slack=False,
    )
    return StageRegistry(settings).get("bench")
