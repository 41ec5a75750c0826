"""A small Server-Sent Events client over http.client, for tests: it reads the stream as a
browser's EventSource would parse it (id, event, data; comments as pings)."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Message:
    """One dispatched SSE message; kind "ping" for a comment line."""

    kind: str
    data: dict | None = None
    id: str | None = None


class SseClient:
    """GET base+path with headers; ``status`` and ``headers`` are the answer's. Iterate
    ``next()`` for messages."""

    def __init__(self, base: str, path: str, headers: dict | None = None,
                 timeout: float = 10.0):
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream",
                                                **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.getheaders())
        self.last_id: str | None = None

    def body(self) -> dict:
        """The JSON body of a refusal."""
        return json.loads(self.response.read())

    def next(self) -> Message:
        """The next message (raises TimeoutError when none comes in time, EOFError when the
        server ended the stream)."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the server ended the stream")
            text = line.decode().rstrip("\n")
            if text.startswith(":"):
                return Message("ping")
            if text == "":
                if "data" in fields:
                    return self._dispatch(fields)
                continue
            name, _, value = text.partition(":")
            fields[name] = value.removeprefix(" ")

    def _dispatch(self, fields: dict[str, str]) -> Message:
        if "id" in fields:
            self.last_id = fields["id"]
        return Message(fields.get("event", "message"), json.loads(fields["data"]),
                       fields.get("id"))

    def events(self, until, seconds: float = 20.0) -> list[Message]:
        """Messages (pings left out) until until(message) is true for one, which is kept."""
        found, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self.next()
            if message.kind == "ping":
                continue
            found.append(message)
            if until(message):
                return found
        raise AssertionError(f"no message ended the wait within {seconds} s: {found}")

    def until_ping(self) -> list[Message]:
        """Every message before the next ping (what the server had to send, all of it)."""
        found = []
        while (message := self.next()).kind != "ping":
            found.append(message)
        return found

    def close(self) -> None:
        self.conn.close()
