"""Making dead-letter records through the real code path: enqueue, then run each job once
in-process with a WorkerProcess whose queue config routes a first failure to the DLQ."""

from __future__ import annotations

import json

from conftest import apply_env

import tests.jobs_for_tests  # noqa: F401  (registers the test jobs)
from backstop import keys, producers
from backstop.hueys import huey_for
from backstop.runner import WorkerProcess

ONE_SHOT = {"system": {"attempts": 1, "rate_limit": 0}}


def one_shot_worker() -> WorkerProcess:
    """An in-process worker for the system queue, not started: call run_pending()."""
    apply_env(BACKSTOP_QUEUES=json.dumps(ONE_SHOT))
    worker = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(worker.id, "system")
    return worker


def run_pending(worker: WorkerProcess) -> int:
    """Run every waiting system job once, synchronously; return how many ran."""
    ran = 0
    while worker.run_next("system"):
        ran += 1
    return ran


def make_dead(payloads: list[dict], job: str = "test.flaky") -> list[str]:
    """Enqueue one job per payload and run them all once; return their ids."""
    worker = one_shot_worker()
    ids = producers.enqueue_many([{"job": job, "payload": p} for p in payloads])
    run_pending(worker)
    return ids
