"""What the kill switch and the breaker cost a healthy enqueue: producers.enqueue (the mode,
the breaker, the fallback bookkeeping) against producers.submit (the same validation and
script, straight to Redis), interleaved in one process against a Redis started here.

Prints each path's enqueues/s (medians of --rounds) and the ratio enqueue / submit
(1.00 = free; the issue's bar is >= 0.97).

    .venv/bin/python bench/breaker.py [--jobs 5000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402


def rate(call, jobs: int) -> float:
    began = time.perf_counter()
    for _ in range(jobs):
        call("bench.noop", {})
    return jobs / (time.perf_counter() - began)


def added_microseconds(calls: int = 200_000) -> float:
    """What the mode check, the breaker and the outcome cost per enqueue, without Redis's
    round trip (which the machine's noise swamps)."""
    from backstop import breaker, delivery, modes
    from backstop.direct import Outcome

    def steps() -> None:
        modes.current()
        guard = breaker.redis_breaker()
        guard.check()
        guard.succeeded()
        delivery.fallbacks.ended()
        Outcome("id", "queued", "waiting")

    return timeit.timeit(steps, number=calls) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="backstop-breaker-bench-"))
    port = redis_server.free_port()
    proc = redis_server.start(port, scratch / "redis", durable=False)
    os.environ.update(REDIS_URL=f"redis://127.0.0.1:{port}/0",
                      OUTBOX_PATH=str(scratch / "outbox.db"))
    try:
        import bench.jobs  # noqa: F401  (registers bench.noop)
        from backstop import producers
        from backstop.connection import client

        producers.enqueue("bench.noop", {})  # the mode watcher starts, connections open
        paths = {"submit (straight)": producers.submit, "enqueue (breaker)": producers.enqueue}
        rates: dict[str, list[float]] = {name: [] for name in paths}
        ratios = []
        for n in range(args.rounds):
            order = list(paths.items()) if n % 2 == 0 else list(reversed(paths.items()))
            now = {}
            for name, call in order:
                client().flushall()
                now[name] = rate(call, args.jobs)
                rates[name].append(now[name])
            ratios.append(now["enqueue (breaker)"] / now["submit (straight)"])
        for name, values in rates.items():
            print(f"{name:18} {statistics.median(values):8.0f} enqueues/s "
                  f"(median of {args.rounds})")
        print(f"ratio enqueue/submit: median of per-round ratios {statistics.median(ratios):.3f}"
              f" (rounds {min(ratios):.3f}-{max(ratios):.3f})")
        print(f"the steps enqueue adds, timed alone: {added_microseconds():.2f} us per enqueue")
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
