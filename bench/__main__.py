"""`make bench`: run every bench/bench_*.py module (or the ones named) against one local cluster."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench
from bench.common import BenchContext
from bot.logs import configure_logging


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = [f"bench_{a.removeprefix('bench_')}" for a in argv] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(names)}")
        return 2
    configure_logging("WARNING")
    with BenchContext() as ctx:
        for name in wanted:
            module = importlib.import_module(f"bench.{name}")
            print(f"\n=== {name}: {(module.__doc__ or '').strip().splitlines()[0]}", flush=True)
            started = time.perf_counter()
            module.run(ctx)
            print(f"--- {name} took {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
