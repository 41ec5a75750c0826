"""What `./run` starts: the embedded Redis is on loopback and needs a password (launcher)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import redis

from backstop import launcher

ROOT = launcher.ROOT


@pytest.fixture
def embedded(tmp_path):
    proc, url = launcher.start_embedded_redis(tmp_path)
    yield proc, url, tmp_path
    proc.terminate()
    proc.wait(10)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_embedded_redis_refuses_a_client_without_its_password(embedded):
    proc, url, var = embedded
    port = url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=int(port)).ping()
    assert redis.Redis.from_url(url).ping()
    password = (var / "redis-password").read_text().strip()
    assert len(password) >= 32 and f":{password}@" in url
    assert mode(var / "redis-password") == mode(var / "redis-url") == 0o600
    assert mode(var / "redis" / "redis.conf") == 0o600
    assert password not in open(f"/proc/{proc.pid}/cmdline").read(), "visible in ps"
    assert redis.Redis.from_url(url).config_get("bind") == {"bind": "127.0.0.1"}


def test_a_restart_keeps_the_password(tmp_path):
    proc, first = launcher.start_embedded_redis(tmp_path)
    proc.terminate()
    proc.wait(10)
    proc, second = launcher.start_embedded_redis(tmp_path)
    try:
        assert first.split("@")[0] == second.split("@")[0]
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_printed_url_hides_the_password():
    assert launcher.redacted_url("redis://:s3cret@127.0.0.1:6380/0") == \
        "redis://***@127.0.0.1:6380/0"


def test_a_busy_port_stops_the_launcher_before_it_starts_anything(redis_url):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "REDIS_URL": redis_url}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "backstop.launcher"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - started < 3, "it should not wait for gunicorn's retries"
    assert f"PORT={port}" in done.stderr and f"127.0.0.1:{port}" in done.stderr
    assert "listening" not in done.stdout, done.stdout
