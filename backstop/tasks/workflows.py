"""Workflows: an ordered list of steps (job name + payload) run one after another.

A run lives in the hash ``keys.workflow_run(run_id)``: name, steps (JSON), status
(running, completed, failed), current (step index), created_at, updated_at, retries, and per
step ``step:<i>:status`` (pending, running, completed, failed), ``step:<i>:error``,
``step:<i>:result``, ``step:<i>:job_id``, ``step:<i>:attempt``. Each step runs its job's
handler inline inside ``workflows.step.execute`` and then enqueues the next step under the
deterministic id ``<run_id>:step:<i+1>``, so a redelivered step never starts its successor
twice. Runs expire RUN_TTL seconds after their last update.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any

import redis

from .. import keys
from ..contracts import (
    WorkflowsDispatch,
    WorkflowsRetry,
    WorkflowsStepExecute,
    job_spec,
    validate_payload,
)
from ..errors import PayloadError, PermanentFailure, UnknownJob
from ..jobs import HANDLERS, JobContext, handler, load_handlers

RUN_TTL = 30 * 86_400
RESULT_LIMIT = 16_000
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")  # always fullmatch


def _json_or_text(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def get_run(r: redis.Redis, run_id: str) -> dict | None:
    """A run as plain data with its steps and their states, or None if there is none."""
    raw = r.hgetall(keys.workflow_run(run_id))
    if not raw:
        return None
    steps = [
        {"index": i, "job": step["job"], "payload": step["payload"],
         "status": raw.get(f"step:{i}:status", "pending"),
         "job_id": raw.get(f"step:{i}:job_id"),
         "attempt": int(raw.get(f"step:{i}:attempt", 0)),
         "result": _json_or_text(raw.get(f"step:{i}:result")),
         "error": _json_or_text(raw.get(f"step:{i}:error"))}
        for i, step in enumerate(json.loads(raw["steps"]))
    ]
    return {"id": run_id, "name": raw["name"], "status": raw["status"],
            "current": int(raw["current"]), "retries": int(raw.get("retries", 0)),
            "created_at": float(raw["created_at"]), "updated_at": float(raw["updated_at"]),
            "steps": steps}


def _save(r: redis.Redis, run_id: str, fields: dict) -> None:
    key = keys.workflow_run(run_id)
    pipe = r.pipeline()
    pipe.hset(key, mapping={**fields, "updated_at": time.time()})
    pipe.expire(key, RUN_TTL)
    pipe.execute()


def _check_steps(payload: WorkflowsDispatch) -> None:
    for i, step in enumerate(payload.steps):
        try:
            validate_payload(step.job, step.payload)
        except (UnknownJob, PayloadError) as exc:
            raise PermanentFailure(f"workflow {payload.name!r} step {i}: {exc}",
                                   code="invalid_step") from None


def _create_run(r: redis.Redis, run_id: str, payload: WorkflowsDispatch) -> bool:
    key, now = keys.workflow_run(run_id), time.time()
    steps = [step.model_dump(mode="json") for step in payload.steps]
    fields = {"name": payload.name, "steps": json.dumps(steps), "status": "running",
              "current": 0, "retries": 0, "created_at": now, "updated_at": now,
              **{f"step:{i}:status": "pending" for i in range(len(steps))}}
    with r.pipeline() as pipe:
        pipe.watch(key)
        if pipe.exists(key):
            return False
        pipe.multi()
        pipe.hset(key, mapping=fields)
        pipe.expire(key, RUN_TTL)
        pipe.execute()
    return True


@handler("workflows.dispatch")
def dispatch(payload: WorkflowsDispatch, ctx: JobContext) -> dict:
    """Create the run (id = run_id or this job's id) and enqueue its step 0.

    Every step is validated first: an unknown job or bad payload fails permanently.
    A run id already used by another workflow fails permanently too.
    """
    _check_steps(payload)
    run_id = payload.run_id or ctx.job_id
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise PermanentFailure(f"run_id {run_id!r} must be 1-100 of A-Z a-z 0-9 _ . : -",
                               code="invalid_run_id")
    created = _create_run(ctx.redis, run_id, payload)
    if not created and ctx.redis.hget(keys.workflow_run(run_id), "name") != payload.name:
        raise PermanentFailure(f"workflow run id {run_id!r} is already used by another workflow",
                               code="run_exists")
    job_id = ctx.enqueue("workflows.step.execute", {"run_id": run_id, "step_index": 0},
                         job_id=f"{run_id}:step:0")
    return {"run_id": run_id, "steps": len(payload.steps), "created": created, "job_id": job_id}


def _require_run(r: redis.Redis, run_id: str) -> dict:
    run = get_run(r, run_id)
    if run is None:
        raise PermanentFailure(f"workflow run {run_id!r} does not exist (or expired)",
                               code="unknown_run")
    return run


def _step_of(run: dict, index: int) -> dict:
    if index >= len(run["steps"]):
        raise PermanentFailure(f"workflow run {run['id']!r} has no step {index}; it has "
                               f"{len(run['steps'])}", code="unknown_step")
    return run["steps"][index]


def run_step(step: dict, ctx: JobContext) -> Any:
    """Validate a step's payload and run its job's handler inline, with the step's job name."""
    try:
        spec = job_spec(step["job"])
        model = spec.model.model_validate(validate_payload(step["job"], step["payload"]))
    except (UnknownJob, PayloadError) as exc:
        raise PermanentFailure(str(exc), code="invalid_step") from None
    if step["job"] not in HANDLERS:
        load_handlers()
    fn = HANDLERS.get(step["job"])
    if fn is None:
        raise PermanentFailure(f"no handler registered for {step['job']!r}", code="no_handler")
    return fn(model, dataclasses.replace(ctx, job_name=step["job"], queue=spec.queue))


def _result_text(result: Any) -> str:
    text = json.dumps(result, default=str)
    return text if len(text) <= RESULT_LIMIT else json.dumps({"truncated": text[:RESULT_LIMIT]})


def _record_failure(ctx: JobContext, run_id: str, index: int, exc: BaseException) -> None:
    final = isinstance(exc, PermanentFailure) or ctx.attempt >= ctx.max_attempts
    error = {"type": type(exc).__name__, "message": str(exc)[:2_000],
             "code": getattr(exc, "code", None), "attempt": ctx.attempt, "final": final}
    fields = {f"step:{index}:status": "failed", f"step:{index}:error": json.dumps(error)}
    if final:
        fields["status"] = "failed"
    _save(ctx.redis, run_id, fields)


def _enqueue_next(ctx: JobContext, run: dict, index: int) -> str | None:
    if index + 1 >= len(run["steps"]):
        return None
    return ctx.enqueue("workflows.step.execute", {"run_id": run["id"], "step_index": index + 1},
                       job_id=f"{run['id']}:step:{index + 1}")


def _advance(ctx: JobContext, run: dict, index: int) -> dict:
    if index + 1 >= len(run["steps"]):
        _save(ctx.redis, run["id"], {"status": "completed", "current": index})
        return {"run_id": run["id"], "step": index, "status": "completed"}
    _save(ctx.redis, run["id"], {"current": index + 1})
    return {"run_id": run["id"], "step": index, "next": _enqueue_next(ctx, run, index)}


def _mark_running(ctx: JobContext, run: dict, index: int) -> None:
    _save(ctx.redis, run["id"], {"status": "running", "current": index,
                                 f"step:{index}:status": "running",
                                 f"step:{index}:job_id": ctx.job_id,
                                 f"step:{index}:attempt": ctx.attempt})
    ctx.progress(100 * index // len(run["steps"]), f"step {index}: {run['steps'][index]['job']}")


@handler("workflows.step.execute")
def step_execute(payload: WorkflowsStepExecute, ctx: JobContext) -> dict:
    """Run step ``step_index`` of a run, record its result, then start the next step.

    A step already completed (a redelivered job) is not run again. On error the step is
    recorded as failed (the run too on the last attempt) and the error is re-raised.
    """
    run_id, index = payload.run_id, payload.step_index
    run = _require_run(ctx.redis, run_id)
    step = _step_of(run, index)
    if step["status"] == "completed":
        return {"run_id": run_id, "step": index, "skipped": True,
                "next": _enqueue_next(ctx, run, index)}
    _mark_running(ctx, run, index)
    try:
        result = run_step(step, ctx)
    except Exception as exc:
        _record_failure(ctx, run_id, index, exc)
        raise
    _save(ctx.redis, run_id, {f"step:{index}:status": "completed",
                              f"step:{index}:result": _result_text(result)})
    return _advance(ctx, run, index)


@handler("workflows.retry")
def retry(payload: WorkflowsRetry, ctx: JobContext) -> dict:
    """Re-run a failed step (step_index, or the run's current step) under a fresh job id."""
    run_id = payload.run_id
    run = _require_run(ctx.redis, run_id)
    index = run["current"] if payload.step_index is None else payload.step_index
    step = _step_of(run, index)
    if step["status"] != "failed":
        raise PermanentFailure(f"step {index} of run {run_id!r} is {step['status']}; "
                               "only a failed step can be retried", code="step_not_failed")
    n = ctx.redis.hincrby(keys.workflow_run(run_id), "retries", 1)
    job_id = ctx.enqueue("workflows.step.execute", {"run_id": run_id, "step_index": index},
                         job_id=f"{run_id}:step:{index}:retry:{n}")
    _save(ctx.redis, run_id, {"status": "running", "current": index,
                              f"step:{index}:status": "pending"})
    return {"run_id": run_id, "step": index, "job_id": job_id}
