"""What `./run` starts: Redis (embedded unless REDIS_URL is set), one worker, the web app.

Ctrl-C (or SIGTERM) stops them in order: web, worker (graceful), Redis (its AOF is kept).
Children run in their own sessions so a terminal's Ctrl-C reaches only this launcher.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from . import keys, redis_server
from .config import read_or_create_key, settings, write_private
from .connection import EMBEDDED_URL_FILE, client, sentinels, timeouts

ROOT = Path(__file__).resolve().parent.parent


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def web_address_problem(host: str, port: int) -> str | None:
    """Why the web app could not bind host:port (None if it can), found before anything starts.

    Binds the way gunicorn does (SO_REUSEADDR), so only a live listener counts as busy.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return (f"cannot listen on {host}:{port} (PORT={port}, HOST={host}): "
                f"{exc.strerror or exc}. Stop what uses it or choose another port, "
                f"e.g. PORT=8080 ./run")
    return None


def start_embedded_redis(var: Path = ROOT / "var") -> tuple[subprocess.Popen, str]:
    """Redis on loopback with its data and AOF under var/redis, so a restart keeps the jobs,
    and a password generated once into var/redis-password (0600): no other local user can
    reach it."""
    port = int(settings().redis_port)
    if not port_is_free(port):
        port = redis_server.free_port()
    password = read_or_create_key(var / "redis-password")
    proc = redis_server.start(port, var / "redis", durable=True, password=password)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    write_private(var / EMBEDDED_URL_FILE.name, url)
    return proc, url


def redacted_url(url: str) -> str:
    """A Redis URL fit to print: its password replaced."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def start_roles(env: dict) -> list[subprocess.Popen]:
    host, port = settings().host, settings().port
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env,
                              start_new_session=True)
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}",
                            "--workers", "2", "--threads", "8", "--access-logfile", "-",
                            "app:create_app()"], cwd=ROOT, env=env, start_new_session=True)
    return [web, worker]


def users_exist(url: str) -> bool:
    try:
        # Under Sentinel the primary is whichever server the Sentinels name.
        found = client() if sentinels() else redis.Redis.from_url(url, **timeouts())
        return bool(found.hlen(keys.users()))
    except redis.RedisError:
        return True


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    problem = web_address_problem(settings().host, int(settings().port))
    if problem:
        print(problem, file=sys.stderr, flush=True)
        return 2
    env = dict(os.environ)
    procs: list[subprocess.Popen] = []
    exit_code = 0
    if not settings().redis_url and not sentinels():
        redis_proc, env["REDIS_URL"] = start_embedded_redis()
        print(f"embedded Redis at {redacted_url(env['REDIS_URL'])} (data in var/redis; its "
              "password in var/redis-password)", flush=True)
        procs.append(redis_proc)
    procs = start_roles(env) + procs
    print(f"Backstop is listening on http://{settings().host}:{settings().port}/", flush=True)
    if not users_exist(env["REDIS_URL"] if "REDIS_URL" in env else settings().redis_url):
        print("no panel user yet; create one with:\n"
              "  .venv/bin/flask --app app users create NAME --role owner", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a process exited; stopping the others", flush=True)
        exit_code = 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
    finally:
        stop(procs)
        EMBEDDED_URL_FILE.unlink(missing_ok=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
