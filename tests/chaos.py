"""Faults under the tests' control: a Redis server of a test's own and a TCP proxy that can
partition the network (stop forwarding without closing, as a dropped route does)."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import redis

from backstop import redis_server


class OwnRedis:
    """A redis-server only this test talks to (so it may be frozen, filled or killed)."""

    def __init__(self, data_dir: Path, durable: bool = False):
        self.port = redis_server.free_port()
        self.data_dir, self.durable = data_dir, durable
        self.proc = redis_server.start(self.port, data_dir, durable=durable)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url, decode_responses=True)

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        """Start it again on the same port and files (with AOF, it keeps what it had)."""
        self.proc = redis_server.start(self.port, self.data_dir, durable=self.durable)


class PartitionProxy:
    """Forwards TCP from a free local port to a target. cut() stops forwarding in both
    directions while keeping every connection open (bytes wait in the proxy, as packets wait
    for a route to come back); heal() delivers them and forwards again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.open = threading.Event()
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.open.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(downstream,), daemon=True).start()

    def _connect(self, downstream: socket.socket) -> None:
        self.open.wait()
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        for source, sink in ((downstream, upstream), (upstream, downstream)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.open.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self.open.wait()
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
