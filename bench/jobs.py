"""The no-op jobs the benchmarks run: raw Huey's task, and Backstop's job of the same work."""

from __future__ import annotations

import os
import time

from huey import RedisHuey

from backstop import define_job
from backstop.contracts import Payload


class Nothing(Payload):
    pass


@define_job("bench.noop", queue="system", model=Nothing)
def noop(payload: Nothing, ctx):
    return None


raw_huey = RedisHuey("bench_raw", url=os.environ.get("REDIS_URL"), results=False)


@raw_huey.task()
def raw_noop():
    return None


class Work(Payload):
    seconds: float = 0.0


@define_job("bench.work", queue="system", model=Work)
def work(payload: Work, ctx):
    """Sleeps, then appends "<id> <attempt>" to $BENCH_RUNS_FILE (counts duplicate runs)."""
    time.sleep(payload.seconds)
    with open(os.environ["BENCH_RUNS_FILE"], "a") as runs:
        runs.write(f"{ctx.job_id} {ctx.attempt}\n")
