"""`make bench`: run every bench/bench_*.py module (or the ones named) against one local cluster.

    python -m bench [--small] [name ...]

Each module runs on its own: one that fails prints `FAILED: <module>: <error>` with a short
traceback and the others still run. The last line sums up every module (ok or FAILED, and how
long it took); the exit status is 1 if any failed.

`--small` (or `MCP_OPS_BENCH_SMALL=1`) uses the demo-size dataset (bench/common.py: SMALL_SPEC)
instead of the 1,000,000-tool-call one: a quick check that every benchmark still runs end to
end, whose figures say nothing about the targets.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
import traceback
from dataclasses import dataclass

import bench
from bench.common import SMALL_SPEC, BenchContext
from bot.logs import configure_logging
from bot.platform.demo_data import BENCH_SPEC

SMALL_ENV = "MCP_OPS_BENCH_SMALL"
TRACEBACK_FRAMES = 6  # the innermost frames of a failure: where it happened, not how the runner got there


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    seconds: float


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))


def run_one(ctx: BenchContext, name: str) -> Result:
    """Import and run one benchmark module; a failure is reported, never raised."""
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n=== {name}: {((module.__doc__ or '').strip().splitlines() or [''])[0]}", flush=True)
        module.run(ctx)
    except Exception as exc:  # one module's failure must not stop the others
        seconds = time.perf_counter() - started
        first_line = (str(exc).strip().splitlines() or [""])[0]
        print(f"FAILED: {name}: {type(exc).__name__}: {first_line}", flush=True)
        print("".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES)).rstrip(), flush=True)
        print(f"--- {name} FAILED after {seconds:.1f} s", flush=True)
        return Result(name, False, seconds)
    seconds = time.perf_counter() - started
    print(f"--- {name} took {seconds:.1f} s", flush=True)
    return Result(name, True, seconds)


def summary(results: list[Result]) -> str:
    parts = [f"{r.name.removeprefix('bench_')} {'ok' if r.ok else 'FAILED'} {r.seconds:.1f} s" for r in results]
    failed = sum(not r.ok for r in results)
    verdict = f"{failed} of {len(results)} FAILED" if failed else f"all {len(results)} ok"
    return f"bench summary ({verdict}): " + ", ".join(parts)


def main(argv: list[str]) -> int:
    small = os.environ.get(SMALL_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    names: list[str] = []
    for arg in argv:
        if arg == "--small":
            small = True
        elif arg.startswith("-"):
            print(f"unknown option {arg}; usage: python -m bench [--small] [name ...]")
            return 2
        else:
            names.append(f"bench_{arg.removeprefix('bench_')}")
    known = available()
    wanted = names or known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(known)}")
        return 2
    configure_logging("WARNING")
    spec = SMALL_SPEC if small else BENCH_SPEC
    if small:
        print(f"small run ({SMALL_ENV}=1 or --small): {spec.big_tool_calls:,} tool calls; figures are not comparable")
    results: list[Result] = []
    with BenchContext(spec=spec) as ctx:
        for name in wanted:
            results.append(run_one(ctx, name))
    print("\n" + summary(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
