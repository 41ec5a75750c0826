"""A real Redis Sentinel setup for tests: a primary, a replica and three Sentinels, all started
from the redis-server binary on free ports (redis-sentinel is `redis-server <conf>
--sentinel`), with quick failure detection (down-after 1 s) and quorum 2.

    cluster = SentinelCluster(tmp_path).start()
    cluster.env()            # REDIS_URL / REDIS_SENTINELS / ... for Backstop's processes
    cluster.kill_primary()   # kill -9; Sentinel promotes the replica
    cluster.stop()           # kills every process it started

The fixture ``cluster`` (import cluster_fixture) starts one for a test, points the test's
settings at it, and stops it at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from conftest import apply_env, wait_for

from backstop import drainer, modes, redis_server

SERVICE = "backstop"
DATA_PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"


class SentinelCluster:
    """Data servers by port (each a redis-server process) and three Sentinels."""

    def __init__(self, base: Path, down_after_ms: int = 1000, failover_timeout_ms: int = 5000):
        self.base = base
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinel_procs: dict[int, subprocess.Popen] = {}
        self.first_primary = 0

    # ---- starting ----

    def start(self) -> SentinelCluster:
        """Start the primary, its replica and the Sentinels; return once every Sentinel
        knows the replica and the two other Sentinels (so a failover can be elected)."""
        try:
            self.first_primary = self.start_server()
            self.start_server(replica_of=self.first_primary)
            wait_for(lambda: self.replicas_online(self.first_primary) == 1, 15,
                     what="the replica to sync")
            for _ in range(3):
                self.start_sentinel(self.first_primary)
            wait_for(self._sentinels_ready, 30, 0.1, what="the Sentinels to find each other")
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self, port: int | None = None, replica_of: int | None = None) -> int:
        """A data server (password DATA_PASSWORD, no persistence), optionally a replica."""
        port = port or redis_server.free_port()
        folder = self.base / f"redis-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = [f"port {port}", "bind 127.0.0.1", f"dir {folder}", "save \"\"",
                  "appendonly no", f"logfile {folder / 'redis.log'}",
                  f"requirepass {DATA_PASSWORD}", f"masterauth {DATA_PASSWORD}",
                  "repl-diskless-sync no"]
        if replica_of:
            config.append(f"replicaof 127.0.0.1 {replica_of}")
        self.servers[port] = self._spawn(folder / "redis.conf", config)
        redis_server.wait_until_ready(f"redis://:{DATA_PASSWORD}@127.0.0.1:{port}/0",
                                      self.servers[port])
        return port

    def start_sentinel(self, primary: int) -> int:
        port = redis_server.free_port()
        folder = self.base / f"sentinel-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = [f"port {port}", "bind 127.0.0.1", f"dir {folder}",
                  f"logfile {folder / 'sentinel.log'}", f"requirepass {SENTINEL_PASSWORD}",
                  f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                  f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
                  f"sentinel auth-pass {SERVICE} {DATA_PASSWORD}",
                  f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                  f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                  f"sentinel parallel-syncs {SERVICE} 1"]
        # A Sentinel rewrites its config file (what it learns): each needs its own, writable.
        self.sentinel_procs[port] = self._spawn(folder / "sentinel.conf", config, "--sentinel")
        return port

    @staticmethod
    def _spawn(config_file: Path, lines: list[str], *extra: str) -> subprocess.Popen:
        config_file.write_text("\n".join(lines) + "\n")
        return subprocess.Popen([redis_server.find_binary(), str(config_file), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def _sentinels_ready(self) -> bool:
        try:
            return all(
                state["num-other-sentinels"] == 2 and state["num-slaves"] == 1
                for state in (self.sentinel(port).sentinel_master(SERVICE)
                              for port in self.sentinel_procs))
        except redis.RedisError:
            return False

    # ---- looking ----

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=1,
                           decode_responses=True)

    def data(self, port: int) -> redis.Redis:
        """A plain client of one data server (not through Sentinel)."""
        return redis.Redis(port=port, password=DATA_PASSWORD, socket_timeout=2,
                           decode_responses=True)

    def primary_port(self) -> int:
        """The primary as the Sentinels name it now (the first one that answers)."""
        for port in self.sentinel_procs:
            try:
                return int(self.sentinel(port).sentinel_get_master_addr_by_name(SERVICE)[1])
            except redis.RedisError:
                continue
        raise RuntimeError("no Sentinel answered")

    def replicas_online(self, port: int) -> int:
        info = self.data(port).info("replication")
        return sum(1 for key, value in info.items()
                   if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")

    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_procs)

    def env(self) -> dict[str, str]:
        """Backstop's settings for this setup. REDIS_URL names the first primary only for
        its password and database: Sentinel decides where the primary is."""
        return {"REDIS_URL": f"redis://:{DATA_PASSWORD}@127.0.0.1:{self.first_primary}/0",
                "REDIS_SENTINELS": self.sentinels(), "REDIS_SENTINEL_SERVICE": SERVICE,
                "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}

    # ---- breaking ----

    def kill(self, port: int) -> None:
        """kill -9 a data server."""
        proc = self.servers.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def kill_primary(self) -> int:
        port = self.primary_port()
        self.kill(port)
        return port

    def wait_for_failover(self, old: int, seconds: float = 30) -> int:
        """The new primary's port, once the Sentinels name one other than old, it took the
        role, and old (if it still runs) has turned into its replica."""
        def promoted():
            port = self.primary_port()
            if port == old or self.data(port).info("replication")["role"] != "master":
                return 0
            if old in self.servers and self.data(old).info("replication")["role"] != "slave":
                return 0
            return port
        return wait_for(_quietly(promoted), seconds, 0.05, what="Sentinel to promote a replica")

    def pause(self, port: int) -> None:
        """Freeze a data server (SIGSTOP): it holds its connections but answers nothing."""
        self.servers[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.servers[port].send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill every process this cluster started."""
        for proc in [*self.sentinel_procs.values(), *self.servers.values()]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # also a SIGSTOPped one
                proc.wait(10)
        self.sentinel_procs.clear()
        self.servers.clear()


def _quietly(predicate):
    def ask():
        try:
            return predicate()
        except (redis.RedisError, RuntimeError):
            return 0
    return ask


@pytest.fixture(name="cluster")
def cluster_fixture(tmp_path):
    """A Sentinel setup, and this test's settings pointed at it (own outbox file too)."""
    cluster = SentinelCluster(tmp_path / "cluster").start()
    apply_env(**cluster.env(), OUTBOX_PATH=str(tmp_path / "outbox.db"))
    modes.forget()
    try:
        yield cluster
    finally:
        modes.forget()  # its watcher thread would go on asking the stopped Sentinels
        drainer.stop()  # as would the outbox drainer a fallback started
        cluster.stop()  # (conftest's autouse fixture restores the test's settings)
