"""Fixtures: a real redis-server on a free port for the whole session, flushed per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backstop import config, connection, contracts, redis_server  # noqa: E402


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    port = redis_server.free_port()
    proc = redis_server.start(port, tmp_path_factory.mktemp("redis"), durable=False)
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["REDIS_URL"] = url
    yield url
    proc.terminate()
    proc.wait(10)


def apply_env(**env: str) -> None:
    """Set environment variables and drop every cache that read them."""
    os.environ.update(env)
    config.settings.cache_clear()
    connection.reset()
    contracts._CONFIGS.clear()


@pytest.fixture
def r(redis_url) -> redis.Redis:
    """A clean Redis (flushed) and fresh settings for one test."""
    os.environ.pop("BACKSTOP_QUEUES", None)
    apply_env(REDIS_URL=redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    return client
