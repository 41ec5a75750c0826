"""Fixtures: a real redis-server on a free port for the whole session, flushed per test."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Cheap argon2 costs for every test and every process a test starts (workers, the CLI):
# production keeps RFC 9106's 64 MiB x 3 passes (tests/test_users.py checks the defaults).
CHEAP_PASSWORD_HASHING = {"PASSWORD_HASH_TIME_COST": "1", "PASSWORD_HASH_MEMORY_KIB": "8",
                          "PASSWORD_HASH_PARALLELISM": "1"}
os.environ.update(CHEAP_PASSWORD_HASHING)
# Each test process has its own outbox file, never the project's var/ (r points each test at
# a file of its own).
os.environ["OUTBOX_PATH"] = str(Path(tempfile.mkdtemp(prefix="backstop-outbox-")) / "outbox.db")

from backstop import (  # noqa: E402
    breaker,
    config,
    connection,
    contracts,
    delivery,
    direct,
    hueys,
    modes,
    redis_server,
    stats,
    system_log,
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    port = redis_server.free_port()
    proc = redis_server.start(port, tmp_path_factory.mktemp("redis"), durable=False)
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["REDIS_URL"] = url
    yield url
    if os.environ.get("BACKSTOP_COMMANDSTATS_FILE"):  # what backstop.redis_acl is built from
        stats = redis.Redis.from_url(url).info("commandstats")
        Path(os.environ["BACKSTOP_COMMANDSTATS_FILE"]).write_text("\n".join(sorted(stats)))
    proc.terminate()
    proc.wait(10)


def apply_env(**env: str) -> None:
    """Set environment variables and drop every cache that read them."""
    os.environ.update(env)
    config.settings.cache_clear()
    connection.reset()
    hueys.huey_for.cache_clear()  # each Huey holds a pool of the REDIS_URL it was made with
    contracts._CONFIGS.clear()
    stats.forget()  # figures read from the Redis of the test before
    breaker.reset()
    delivery.fallbacks.reset()
    direct.forget()  # its heartbeat would go on into the next test's Redis
    system_log.outbox_tally.forget()  # a test's outbox acceptances are not the next one's


@pytest.fixture(autouse=True)
def _environment_restored():
    """Whatever a test sets in os.environ (apply_env) ends with it: no setting leaks into
    the next test, or into the workers it starts."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
        apply_env()


@pytest.fixture
def r(redis_url, tmp_path) -> redis.Redis:
    """A clean Redis (flushed), an empty outbox and fresh settings for one test."""
    os.environ.pop("BACKSTOP_QUEUES", None)
    apply_env(REDIS_URL=redis_url, OUTBOX_PATH=str(tmp_path / "outbox.db"))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    modes.forget()  # the flushed Redis holds no mode: the default, not the last test's
    return client


@pytest.fixture
def api(r):
    """A test client of a freshly made web app (send a token: helpers.auth)."""
    from app import create_app

    app = create_app()
    app.testing = True
    return app.test_client()


@pytest.fixture
def cli(r):
    """Runs the web role's flask commands in this process: cli("tokens", "create", "bot")."""
    from app import create_app

    runner = create_app().test_cli_runner()
    return lambda *args, **options: runner.invoke(args=list(args), **options)


import json as _json  # noqa: E402
import signal as _signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Workers:
    """Starts real `python worker.py` processes against the test Redis."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.procs: list[subprocess.Popen] = []

    def start(self, queues: str = "system", queue_config: dict | None = None,
              log_to: Path | None = None, **env: str) -> subprocess.Popen:
        """Start `worker.py --queues ...`; its log goes to log_to (appended) if given."""
        environ = {**os.environ, "REDIS_URL": self.redis_url, "PYTHONPATH": str(ROOT),
                   "BACKSTOP_TASK_MODULES": "tests.jobs_for_tests",
                   "BACKSTOP_QUEUES": _json.dumps(queue_config or {}),
                   "WORKER_HEARTBEAT_SECONDS": "0.5", "WORKER_HEARTBEAT_TTL": "2",
                   "WORKER_REAPER_SECONDS": "0.5",
                   # No scheduled jobs (a health check each minute) unless a test asks.
                   "SCHEDULES_ENABLED": "0", **env}
        log = open(log_to, "a") if log_to else None  # noqa: SIM115  (the child keeps it)
        proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--queues", queues],
                                cwd=ROOT, env=environ, stderr=log)
        if log:
            log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(_signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def workers(r, redis_url):
    pool = Workers(redis_url)
    yield pool
    pool.stop_all()


# The browser fixtures, registered once for the whole session (they start nothing until used).
from browser_support import browser, chromium_path, live_server, page  # noqa: E402, F401
