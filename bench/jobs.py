"""The no-op jobs the benchmarks run: raw Huey's task, and Backstop's job of the same work."""

from __future__ import annotations

import os

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
