"""The cost of REDIS_MIN_REPLICAS_ACK: single enqueues/s and enqueue_many's jobs/s against a
primary with one replica, with and without WAIT, interleaved (off on off on ...).

Both servers are started here on free ports, on loopback: a replica in another zone adds its
network round trip to every acknowledged enqueue.

    .venv/bin/python bench/replica_ack.py [--jobs 3000] [--rounds 5] [--batch 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import config, connection, hueys, redis_server  # noqa: E402


def start_pair() -> tuple[list[subprocess.Popen], str]:
    """A primary and its replica (no persistence); the primary's URL."""
    primary = redis_server.free_port()
    procs = [redis_server.start(primary, Path(tempfile.mkdtemp()), durable=False)]
    replica = redis_server.free_port()
    procs.append(subprocess.Popen(
        [redis_server.find_binary(), "--port", str(replica), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tempfile.mkdtemp(), "--replicaof", "127.0.0.1",
         str(primary)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs, f"redis://127.0.0.1:{primary}/0"


def use(url: str, replicas: int) -> None:
    os.environ.update(REDIS_URL=url, REDIS_MIN_REPLICAS_ACK=str(replicas),
                      BACKSTOP_TASK_MODULES="bench.jobs")
    config.settings.cache_clear()
    connection.reset()
    hueys.huey_for.cache_clear()


def one_round(url: str, replicas: int) -> tuple[float, float]:
    from backstop import producers

    use(url, replicas)
    connection.client().flushall()
    while connection.client().wait(1, 100) < 1:  # the replica is connected and caught up
        time.sleep(0.05)
    began = time.perf_counter()
    for _ in range(ARGS.jobs):
        producers.enqueue("bench.noop", {})
    single = ARGS.jobs / (time.perf_counter() - began)
    batch = [{"job": "bench.noop", "payload": {}}] * ARGS.batch
    began = time.perf_counter()
    for _ in range(ARGS.jobs // ARGS.batch):
        producers.enqueue_many(batch)
    many = (ARGS.jobs // ARGS.batch) * ARGS.batch / (time.perf_counter() - began)
    return single, many


def main() -> None:
    procs, url = start_pair()
    try:
        results: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
        one_round(url, 0)  # warm up: scripts loaded, modules imported
        for _ in range(ARGS.rounds):
            for replicas in (0, 1):
                results[replicas].append(one_round(url, replicas))
        off, on = ({kind: statistics.median(r[kind] for r in results[n]) for kind in (0, 1)}
                   for n in (0, 1))
        print(f"single enqueue/s   no WAIT {off[0]:7.0f}   WAIT 1 replica {on[0]:7.0f}   "
              f"ratio {on[0] / off[0]:.2f}")
        print(f"enqueue_many jobs/s no WAIT {off[1]:7.0f}   WAIT 1 replica {on[1]:7.0f}   "
              f"ratio {on[1] / off[1]:.2f}   (batches of {ARGS.batch})")
        print(f"medians of {ARGS.rounds} interleaved rounds of {ARGS.jobs} jobs")
    finally:
        for proc in procs:
            proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    ARGS = parser.parse_args()
    main()
