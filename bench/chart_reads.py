"""How long a queue page's charts take to read, per window, and why 24 h and 48 h read the
hourly roll-ups (backstop.charts).

One run against its own non-durable redis-server on a free port: 48 hours of metrics for one
queue of 4 job names, --per-minute attempts a minute (runtimes and waits spread over several
histogram buckets, a few failures), written as the FINISH script writes them (minute hashes
and hourly roll-ups), with a backlog every minute. Then the median of --reps of:

- charts.queue_charts(queue, hours) for 1, 6, 24 and 48 h (what the page reads and draws);
- the 48 h chart read from the 2,880 minute hashes instead (metrics.series, summed over
  every job name together);
- the raw pipeline of those 2,880 HGETALLs alone.

Absolute times drift +-30% between runs on these machines; read the ratios.

    .venv/bin/python bench/chart_reads.py [--per-minute 100] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402

JOBS = ("email.send", "email.otp.send", "email.notification.dispatch", "email.digest")


def seed(r, keys, metrics, per_minute: int, now: float) -> None:
    """48 h (and an hour more) of one queue's metrics, with a backlog every minute."""
    rng = random.Random(7)
    last = metrics.minute_of(now)
    pipe = r.pipeline(transaction=False)
    for minute in range(last - 49 * 60, last + 1):
        fields: dict[str, int] = {}
        for _ in range(per_minute):
            job = rng.choice(JOBS)
            outcome = "ok" if rng.random() > 0.03 else rng.choice(("retry", "dead"))
            runtime, wait = rng.lognormvariate(-3, 1.2), rng.lognormvariate(-5, 1.5)
            for name, value in metrics.fields_for(job, outcome, runtime, wait).items():
                fields[name] = fields.get(name, 0) + value
        for key in (keys.metrics_minute("email", minute), keys.metrics_hour("email", minute // 60)):
            for name, value in fields.items():
                pipe.hincrby(key, name, value)
        pipe.hset(keys.metrics_minute("email", minute), "backlog", rng.randint(0, 50))
    pipe.execute()


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-minute", type=int, default=100)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    port = redis_server.free_port()
    proc = redis_server.start(port, Path(tempfile.mkdtemp()), durable=False)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    try:
        redis_server.wait_until_ready(os.environ["REDIS_URL"], proc)
        run(args.per_minute, args.reps)
    finally:
        proc.terminate()
        proc.wait(10)


def run(per_minute: int, reps: int) -> None:
    from backstop import charts, keys, metrics
    from backstop.connection import client

    r, now = client(), time.time()
    seed(r, keys, metrics, per_minute, now)
    last = metrics.minute_of(now)
    print(f"{per_minute} attempts/min over 4 job names; a minute hash holds "
          f"{r.hlen(keys.metrics_minute('email', last - 1))} fields")
    for hours in charts.WINDOWS:
        ms = median_ms(lambda h=hours: charts.queue_charts("email", h, now=now), reps)
        print(f"queue_charts {hours:>2} h ({charts.window(hours).source} hashes): {ms:8.1f} ms")
    lean = median_ms(lambda: metrics.read(r, lambda p: charts.steps(
        p, "email", charts.Window(48, 40, "minute", 480), now)), reps)

    def raw() -> None:
        pipe = r.pipeline(transaction=False)
        for minute in range(last - 2879, last + 1):
            pipe.hgetall(keys.metrics_minute("email", minute))
        pipe.execute()

    hourly = median_ms(lambda: charts.queue_charts("email", 48, now=now), reps)
    print(f"48 h from minute hashes, lean sum:        {lean:8.1f} ms ({lean / hourly:.0f}x)")
    print(f"48 h raw HGETALL of 2,880 minute hashes:  {median_ms(raw, reps):8.1f} ms")


if __name__ == "__main__":
    main()
