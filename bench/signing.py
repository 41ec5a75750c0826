"""What signing queue messages costs: enqueue and run rates with signatures computed and
checked, against the same code with the HMAC replaced by a constant (ABBA-interleaved, one
process, one Redis started here). Prints medians of the rates and of this process's CPU time
per job, then the CPU signing adds (tight loops, which are stable where rates on a shared
machine drift by 10% between runs) as a share of a job's CPU: the figure to hold under 3%.

    .venv/bin/python bench/signing.py [--jobs 3000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import redis_server  # noqa: E402


@contextmanager
def unsigned():
    """Every signature a constant: the frame and the check stay, the HMAC goes."""
    from backstop import hueys

    real = hueys._signature
    hueys._signature = lambda signed: b"0" * hueys.SIGNATURE_LENGTH
    try:
        yield
    finally:
        hueys._signature = real


def one_round(client) -> tuple[float, float, float, float]:
    """Enqueue then run ARGS.jobs no-op jobs in this process: (enqueued per second, run per
    second, CPU microseconds of this process per enqueue, per run). CPU time leaves out the
    waits on Redis, whose noise on a shared machine is larger than the cost measured."""
    from backstop import keys, producers
    from backstop.hueys import huey_for
    from backstop.runner import WorkerProcess

    client.flushall()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(ARGS.jobs):
        producers.enqueue("bench.noop", {})
    enqueue = (time.perf_counter() - wall, time.process_time() - cpu)
    worker = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(worker.id, "system")
    wall, cpu = time.perf_counter(), time.process_time()
    while worker.run_next("system"):
        pass
    run = (time.perf_counter() - wall, time.process_time() - cpu)
    return (ARGS.jobs / enqueue[0], ARGS.jobs / run[0], enqueue[1] / ARGS.jobs * 1e6,
            run[1] / ARGS.jobs * 1e6)


def signing_microseconds() -> tuple[float, float]:
    """(µs signing adds to framing a message, µs checking adds to opening one), each the
    difference of two tight loops over a real no-op message: stable where rates are not."""
    import timeit

    from backstop.hueys import frame, huey_for, open_message, task_wrapper

    data = huey_for("system").serialize_task(
        task_wrapper("system")(("bench.noop", {}), {}, id="0" * 32))
    message = frame("0" * 32, "bench.noop", data)

    def per_call(fn) -> float:
        return min(timeit.repeat(fn, number=20_000, repeat=5)) / 20_000 * 1e6

    signed = (per_call(lambda: frame("0" * 32, "bench.noop", data)),
              per_call(lambda: open_message(message)))
    with unsigned():
        message = frame("0" * 32, "bench.noop", data)
        plain = (per_call(lambda: frame("0" * 32, "bench.noop", data)),
                 per_call(lambda: open_message(message)))
    return signed[0] - plain[0], signed[1] - plain[1]


def main() -> None:
    port = redis_server.free_port()
    proc = redis_server.start(port, Path(tempfile.mkdtemp()), durable=False)
    os.environ.update(REDIS_URL=f"redis://127.0.0.1:{port}/0", SECRET_KEY="bench",
                      BACKSTOP_TASK_MODULES="bench.jobs",
                      BACKSTOP_QUEUES=json.dumps({"system": {"rate_limit": 0}}))
    import redis

    import bench.jobs  # noqa: F401  (registers bench.noop)
    from backstop.jobs import load_handlers

    load_handlers()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    results: dict[str, list] = {"unsigned": [], "signed": []}
    try:
        for n in range(ARGS.rounds):
            order = ("unsigned", "signed") if n % 2 == 0 else ("signed", "unsigned")
            for arm in order:
                if arm == "unsigned":
                    with unsigned():
                        results[arm].append(one_round(client))
                else:
                    results[arm].append(one_round(client))
        added = signing_microseconds()
    finally:
        proc.terminate()
    report(results, added)


def report(results: dict, added: tuple[float, float]) -> None:
    med = {arm: [statistics.median(r[i] for r in rows) for i in range(4)]
           for arm, rows in results.items()}
    print(f"jobs per round {ARGS.jobs}, rounds {ARGS.rounds} (ABBA), one process")
    for i, what in enumerate(("enqueued/s      ", "run/s           ")):
        print(f"{what} unsigned {med['unsigned'][i]:8.0f}   signed {med['signed'][i]:8.0f}   "
              f"ratio {med['signed'][i] / med['unsigned'][i]:.3f}")
    for i, what in ((2, "CPU us / enqueue"), (3, "CPU us / run    ")):
        print(f"{what} unsigned {med['unsigned'][i]:8.1f}   signed {med['signed'][i]:8.1f}")
    for cost, i, what in ((added[0], 2, "enqueue"), (added[1], 3, "run")):
        print(f"signing adds {cost:5.1f} us of CPU per {what:7}: "
              f"{cost / med['unsigned'][i]:.1%} of its CPU (ratio after/before "
              f"{med['unsigned'][i] / (med['unsigned'][i] + cost):.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    ARGS = parser.parse_args()
    main()
