"""The outbox's accept rate while Redis is down, and its drain rate when Redis returns.

With REDIS_URL pointing at a port where nothing listens, the breaker opens after its first
failures and every enqueue commits to the host's SQLite outbox (WAL, synchronous=FULL: one
fsync per job). Prints jobs/s for 1 and 4 producer threads (medians of --rounds), then how
fast one process drains what was kept into a Redis started here.

    .venv/bin/python bench/outbox.py [--jobs 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402


def accept_rate(jobs: int, threads: int) -> float:
    """Jobs/s of `threads` producers enqueueing `jobs` in all while Redis is unreachable."""
    from backstop import producers

    share = jobs // threads

    def produce() -> None:
        for _ in range(share):
            outcome = producers.dispatch("bench.noop", {})
            assert outcome.how == "outbox", outcome

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return share * threads / (time.perf_counter() - began)


def drain_rate(url: str) -> tuple[int, float]:
    from backstop import breaker, connection, drainer, outbox
    from backstop.config import settings

    os.environ["REDIS_URL"] = url
    settings.cache_clear()
    connection.reset()
    breaker.reset()
    drainer.stop()
    waiting = outbox.depth()
    began = time.perf_counter()
    moved = outbox.drain()
    assert moved == waiting, (moved, waiting)
    return moved, moved / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="backstop-outbox-bench-"))
    os.environ.update(REDIS_URL=f"redis://127.0.0.1:{redis_server.free_port()}/0",
                      OUTBOX_PATH=str(scratch / "outbox.db"), REDIS_CONNECT_TIMEOUT="1",
                      BREAKER_RESET_SECONDS="3600",
                      OUTBOX_DRAIN_SECONDS="3600")  # nothing drains while the bench fills it
    import bench.jobs  # noqa: F401  (registers bench.noop)
    rates: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(args.rounds):
        for threads in rates:
            rates[threads].append(accept_rate(args.jobs, threads))
    for threads, values in rates.items():
        print(f"outbox accepts, {threads} thread(s): {statistics.median(values):8.0f} jobs/s "
              f"(median of {args.rounds}; {min(values):.0f}-{max(values):.0f})")
    port = redis_server.free_port()
    proc = redis_server.start(port, scratch / "redis", durable=False)
    try:
        moved, rate = drain_rate(f"redis://127.0.0.1:{port}/0")
        print(f"drain into Redis: {moved} jobs at {rate:8.0f} jobs/s")
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
