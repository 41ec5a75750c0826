"""The worker role: `python worker.py [--queues q1,q2] [--concurrency N]`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from backstop.connection import NoRedisConfigured
from backstop.contracts import QUEUES
from backstop.runner import WorkerProcess


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run Backstop's consumers in one process.")
    parser.add_argument("--queues", default=",".join(QUEUES),
                        help="comma-separated queues to consume (default: all)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="threads per queue (default: each queue's configured concurrency)")
    args = parser.parse_args(argv)
    args.queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    unknown = set(args.queues) - set(QUEUES)
    if unknown:
        parser.error(f"unknown queues: {', '.join(sorted(unknown))}; "
                     f"queues are {', '.join(QUEUES)}")
    return args


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        worker = WorkerProcess(args.queues, args.concurrency)
    except NoRedisConfigured as exc:
        print(f"worker.py: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum, frame):
        (worker.hurry if stopping.is_set() else stopping).set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    while not stopping.wait(0.5):
        pass
    logging.getLogger("backstop.worker").info("shutting down (signal again to hurry)")
    worker.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
