"""What runs inside a worker thread for one job: handler lookup, contract check, context."""

from __future__ import annotations

import threading
import time

from pydantic import ValidationError

from .connection import client
from .contracts import job_spec, queue_config
from .errors import PermanentFailure
from .jobs import HANDLERS, JobContext, load_handlers
from .registry import report_progress

_local = threading.local()


def set_context(ctx: JobContext | None) -> None:
    _local.ctx = ctx


def enter_job(job_id: str, job_name: str, queue: str, attempt: int, max_attempts: int,
              deadline: float, redis) -> None:
    """Give this thread the context of the attempt it runs (progress goes to its record)."""
    set_context(JobContext(
        job_id=job_id, job_name=job_name, queue=queue, attempt=attempt,
        max_attempts=max_attempts, deadline=deadline, redis=redis,
        report=lambda jid, pct, msg: report_progress(jid, queue, job_name, pct, msg)))


def current_context(job_name: str) -> JobContext:
    """The running job's context; a bare one when called outside a Backstop worker."""
    ctx = getattr(_local, "ctx", None)
    if ctx is not None:
        return ctx
    queue = job_spec(job_name).queue
    return JobContext(job_id="local", job_name=job_name, queue=queue, attempt=1,
                      max_attempts=1, deadline=time.monotonic() + queue_config(queue).timeout,
                      redis=client())


def run_current_job(job_name: str, payload: dict | str):
    """Validate the payload against its contract and run the job's handler. payload: the
    JSON text a queue message carries, or the payload as data.

    Raises PermanentFailure when no handler exists or the payload breaks the contract:
    retrying cannot fix either.
    """
    load_handlers()
    handler = HANDLERS.get(job_name)
    if handler is None:
        raise PermanentFailure(f"no handler is registered for {job_name!r}; register one with "
                               "@backstop.handler and list its module in BACKSTOP_TASK_MODULES",
                               code="no_handler")
    try:
        contract = job_spec(job_name).model
        model = (contract.model_validate_json(payload) if isinstance(payload, str)
                 else contract.model_validate(payload))
    except ValidationError as exc:
        raise PermanentFailure(f"payload breaks the contract of {job_name}: {exc}",
                               code="bad_payload") from None
    return handler(model, current_context(job_name))
