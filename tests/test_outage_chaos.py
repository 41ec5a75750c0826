"""Redis stopped under real HTTP load (gunicorn, several client threads, worker processes):
every request is answered 202 or 201, and every accepted job completes, one record per id.
And kill -9 of the web process while its outbox holds jobs loses none of them."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from browser_support import wait_for_port
from chaos import OwnRedis
from conftest import ROOT, apply_env, wait_for

from backstop import keys, redis_server, system_log, tokens

QUEUES = json.dumps({"system": {"rate_limit": 0, "backoff_jitter": 0, "keep_completed": 10_000,
                                "concurrency": 4}})
QUICK = {"REDIS_SOCKET_TIMEOUT": "2", "REDIS_CONNECT_TIMEOUT": "1",
         "BREAKER_RESET_SECONDS": "1", "WORKER_RECONCILE_SECONDS": "0.5",
         "WORKER_RECONCILE_GRACE": "4",
         "RATE_LIMIT_DEFAULT": "20000 per minute"}  # the load comes from one address


class Web:
    """gunicorn serving the web role, in a process group of its own (so kill -9 takes the
    master and its workers at once)."""

    def __init__(self, env: dict, processes: int = 2):
        self.processes = processes
        self.port = redis_server.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> Web:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(self.processes), "--threads", "8", "--log-level", "warning",
             "app:create_app()"], cwd=ROOT, env=self.env, start_new_session=True)
        wait_for_port(self.port, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def outage(r, tmp_path, redis_url, workers):
    """A durable Redis of the test's own, the environment of every process, a token."""
    own = OwnRedis(tmp_path / "redis", durable=True)
    env = {"REDIS_URL": own.url, "OUTBOX_PATH": str(tmp_path / "outbox.db"),
           "BACKSTOP_QUEUES": QUEUES, "TEST_RUNS_FILE": str(tmp_path / "runs"), **QUICK}
    apply_env(**env)
    token = tokens.create("load", "operator")
    process_env = {**os.environ, "BACKSTOP_TASK_MODULES": "tests.jobs_for_tests",
                   "PYTHONPATH": str(ROOT), **env}
    webs: list[Web] = []
    yield own, process_env, {"Authorization": f"Bearer {token}"}, webs
    for web in webs:
        web.kill()
    apply_env(REDIS_URL=redis_url)
    own.stop()


def runs(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line)


def outbox_depth(env: dict) -> int:
    with sqlite3.connect(env["OUTBOX_PATH"]) as db:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def completed(client, ids: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.job(job_id), "state")
    return sum(state == "completed" for state in pipe.execute())


def send(base: str, headers: dict, ids: list[str], per_second: float, answers: dict) -> None:
    """POST one job per id, paced; note each answer's status (or the exception)."""
    session = requests.Session()
    began = time.monotonic()
    for n, job_id in enumerate(ids):
        time.sleep(max(0.0, began + n / per_second - time.monotonic()))
        try:
            response = session.post(f"{base}/api/v1/jobs", headers=headers, timeout=30,
                                    json={"job": "test.nap", "job_id": job_id,
                                          "payload": {"seconds": 0}})
            answers[job_id] = (response.status_code, response.json().get("outbox", False))
        except Exception as exc:  # noqa: BLE001  (a dropped request is a finding)
            answers[job_id] = (repr(exc), False)


def test_redis_stopped_for_20_s_under_http_load_loses_no_accepted_job(outage, workers,
                                                                      tmp_path):
    own, env, headers, webs = outage
    web = Web(env).start()
    webs.append(web)
    for _ in range(2):
        workers.start("system", json.loads(QUEUES), REDIS_URL=own.url, **{
            k: v for k, v in env.items() if k not in ("REDIS_URL", "BACKSTOP_QUEUES")})
    ids = [f"load-{n}" for n in range(2_000)]
    answers: dict[str, tuple] = {}
    clients = [threading.Thread(target=send, args=(web.url, headers, ids[k::4], 18.5, answers))
               for k in range(4)]  # ~75 requests/s in all: the 20 s outage fits inside
    for client in clients:
        client.start()
    time.sleep(4)
    own.stop()
    stopped_at = len(answers)
    time.sleep(20)
    own.restart()
    back, restarted_at = time.monotonic(), len(answers)
    wait_for(lambda: outbox_depth(env) == 0, timeout=30, interval=0.1, what="the drain")
    drained_in = time.monotonic() - back
    for client in clients:
        client.join(120)
    web.kill()

    statuses = Counter(status for status, _ in answers.values())
    kept = sum(in_outbox for _, in_outbox in answers.values())
    print(f"answers {dict(statuses)}; {kept} kept in the outbox; outbox empty {drained_in:.1f} s "
          "after Redis returned")
    assert set(statuses) <= {201, 202}, f"answers: {statuses}"
    assert drained_in < 6, f"the outbox drained {drained_in:.1f} s after Redis returned"
    assert len(answers) == 2_000 and restarted_at - stopped_at > 1_000
    assert kept > 1_000, f"the outage's jobs went to the outbox ({kept})"
    wait_for(lambda: completed(own.client, ids) == 2_000, timeout=90, what="every job done")
    assert set(runs(Path(env["TEST_RUNS_FILE"]))) == set(ids)
    assert int(own.client.hget(keys.queue_stats("system"), "enqueued")) == 2_000
    assert len(own.client.keys(keys.job("load-*"))) == 2_000, "one record per id"
    messages = [e["message"] for e in system_log.entries(limit=200)]
    assert any(m.startswith("Redis cannot take enqueues") for m in messages)
    assert any(m.startswith("drained") for m in messages)


def test_kill_9_of_the_web_process_loses_no_job_of_its_outbox(outage, workers, tmp_path):
    own, env, headers, webs = outage
    web = Web(env, processes=1).start()  # it verifies the token before the outage
    webs.append(web)
    assert requests.get(f"{web.url}/api/v1/jobs/none", headers=headers).status_code == 404
    own.stop()
    ids = [f"kept-{n}" for n in range(50)]
    for job_id in ids:
        answer = requests.post(f"{web.url}/api/v1/jobs", headers=headers, timeout=30,
                               json={"job": "test.nap", "job_id": job_id})
        assert answer.status_code == 202 and answer.json()["outbox"] is True, answer.text
    web.kill()
    with sqlite3.connect(env["OUTBOX_PATH"]) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 50
    own.restart()
    webs.append(Web(env).start())  # its drainer starts with the app, before any request
    workers.start("system", json.loads(QUEUES), REDIS_URL=own.url, **{
        k: v for k, v in env.items() if k not in ("REDIS_URL", "BACKSTOP_QUEUES")})
    wait_for(lambda: completed(own.client, ids) == 50, timeout=60, what="the kept jobs done")
    assert set(runs(Path(env["TEST_RUNS_FILE"]))) == set(ids)
