"""The worker role: `python worker.py [--queues q1,q2] [--concurrency N] [--processes N|auto]`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from backstop import supervisor
from backstop.connection import NoRedisConfigured
from backstop.contracts import QUEUES
from backstop.runner import WorkerProcess

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
SUPERVISED_LOG_FORMAT = "%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s"


def process_count(text: str) -> int:
    """--processes: a whole number of at least 1, or "auto" (this machine's cores)."""
    if text.strip().lower() == "auto":
        return supervisor.cores()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of processes; give a whole number such as 2, "
            "or auto") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} processes: give at least 1, or auto")
    return count


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run Backstop's consumers.")
    parser.add_argument("--queues", default=",".join(QUEUES),
                        help="comma-separated queues to consume (default: all)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="threads per queue (default: each queue's configured concurrency)")
    parser.add_argument("--processes", type=process_count, default=1,
                        help="worker processes under one supervisor, each with its threads; "
                             "auto: one per core (default: 1, no supervisor)")
    parser.add_argument("--supervised-by", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    unknown = set(args.queues) - set(QUEUES)
    if unknown:
        parser.error(f"unknown queues: {', '.join(sorted(unknown))}; "
                     f"queues are {', '.join(QUEUES)}")
    return args


def child_command(args: argparse.Namespace) -> list[str]:
    """How the supervisor (this process) starts each of its worker processes."""
    command = [sys.executable, str(Path(__file__).resolve()), "--queues", ",".join(args.queues),
               "--supervised-by", str(os.getpid())]
    if args.concurrency is not None:
        command += ["--concurrency", str(args.concurrency)]
    return command


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    supervised = args.processes > 1 or args.supervised_by is not None
    logging.basicConfig(level=logging.INFO,
                        format=SUPERVISED_LOG_FORMAT if supervised else LOG_FORMAT)
    if args.processes > 1:
        return supervisor.Supervisor(child_command(args), args.processes).run()
    if args.supervised_by is not None:
        supervisor.follow_supervisor(args.supervised_by)
    return run_worker(args)


def run_worker(args: argparse.Namespace) -> int:
    """One WorkerProcess in this process, until SIGTERM/SIGINT (twice: hurry)."""
    try:
        worker = WorkerProcess(args.queues, args.concurrency)
    except NoRedisConfigured as exc:
        print(f"worker.py: {exc}", file=sys.stderr)
        return supervisor.CONFIGURATION_ERROR
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
