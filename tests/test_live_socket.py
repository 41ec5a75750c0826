"""The live socket over real HTTP (gunicorn): who may upgrade, and what a reconnect receives."""

from __future__ import annotations

import base64
import os
import re
import socket
import struct

import pytest
import requests
from chaos import OwnRedis
from conftest import apply_env
from helpers import PASSWORD, form_token_of

from backstop import audit, producers, registry, users

MAIL = {"to": ["a@example.com"], "subject": "s", "text": "t"}


@pytest.fixture
def plain_http(r):
    """Session cookies over plain http, so this test's HTTP client sends them."""
    apply_env(COOKIE_SECURE="0")
    yield
    apply_env(COOKIE_SECURE="1")


@pytest.fixture
def own_redis(r, redis_url, tmp_path):
    """The web role talks to a Redis of this test's own, so the test may kill it."""
    own = OwnRedis(tmp_path / "redis")
    apply_env(REDIS_URL=own.url)
    yield own
    if own.proc.poll() is None:
        own.stop()
    apply_env(REDIS_URL=redis_url)


def session_cookie(base: str, name: str = "vic", role: str = "viewer") -> str:
    users.create(name, role, PASSWORD)
    browser = requests.Session()
    page = browser.get(base + "/login").text
    token = form_token_of(page)
    browser.post(base + "/login", data={"name": name, "password": PASSWORD,
                                        "csrf_token": token}, allow_redirects=False)
    return "; ".join(f"{c.name}={c.value}" for c in browser.cookies)


def handshake(base: str, query: str, origin: str | None, cookie: str | None):
    """Upgrade the panel's live socket by hand; return (status, socket)."""
    headers = {"Origin": origin, "Cookie": cookie}
    return upgrade(base, f"/ws?{query}", {k: v for k, v in headers.items() if v})


def upgrade(base: str, path: str, headers: dict | None = None):
    """Send a WebSocket upgrade for path by hand; return (status, socket)."""
    host = base.removeprefix("http://")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Version: 13",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    hostname, port = host.split(":")
    sock = socket.create_connection((hostname, int(port)), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    return int(head.split()[1]), sock


def read_text_frame(sock: socket.socket) -> str:
    """One unmasked text frame from the server (small frames and 16/64-bit lengths)."""
    first, second = sock.recv(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", recv_exactly(sock, 2))[0]
    elif length == 127:
        length = struct.unpack(">Q", recv_exactly(sock, 8))[0]
    payload = recv_exactly(sock, length)
    return payload.decode() if first & 0x0F == 1 else read_text_frame(sock)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data


def test_no_session_or_a_foreign_origin_is_refused_before_the_upgrade(plain_http, live_server):
    cookie = session_cookie(live_server)
    no_session, _ = handshake(live_server, "page=overview", live_server, None)
    foreign, _ = handshake(live_server, "page=overview", "http://evil.example", cookie)
    missing_origin, _ = handshake(live_server, "page=overview", None, cookie)
    allowed, sock = handshake(live_server, "page=overview", live_server, cookie)
    assert (no_session, foreign, missing_origin, allowed) == (401, 403, 403, 101)
    sock.close()
    refused = audit.entries(action="live.connect").items
    assert [(e["actor"], e["result"]) for e in refused] == [("user:vic", "refused 403")] * 2
    assert "evil.example" in refused[1]["summary"]["reason"]


def test_a_reconnect_with_the_last_event_id_receives_what_it_missed(plain_http, live_server):
    cookie = session_cookie(live_server)
    producers.enqueue("email.send", MAIL)
    last_seen = registry.latest_events(1)[0]["id"]
    missed = [producers.enqueue("email.send", MAIL) for _ in range(3)]
    missed_ids = [e["id"] for e in registry.recent_events(after=last_seen)]
    assert len(missed_ids) == 3
    status, sock = handshake(live_server, f"page=overview&topic=all&last_id={last_seen}",
                             live_server, cookie)
    assert status == 101
    pushed = read_text_frame(sock)
    assert all(f'data-event-id="{event_id}"' in pushed for event_id in missed_ids)
    assert all(job_id in pushed for job_id in missed)
    sock.close()


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked frame from the server: (opcode, payload)."""
    first, second = recv_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", recv_exactly(sock, 2))[0]
    elif length == 127:
        length = struct.unpack(">Q", recv_exactly(sock, 8))[0]
    return first & 0x0F, recv_exactly(sock, length)


def first_frame_but_pings(sock: socket.socket) -> tuple[int, bytes]:
    while True:
        opcode, payload = read_frame(sock)
        if opcode not in (9, 10):
            return opcode, payload


@pytest.mark.parametrize("ending", ["sign-out", "password change"])
def test_an_open_socket_is_closed_when_its_session_ends(plain_http, live_server, ending):
    users.create("vic", "viewer", PASSWORD)
    browser = requests.Session()
    page = browser.get(live_server + "/login").text
    token = form_token_of(page)
    browser.post(live_server + "/login", data={"name": "vic", "password": PASSWORD,
                                               "csrf_token": token}, allow_redirects=False)
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    status, sock = handshake(live_server, "page=overview&topic=all", live_server, cookie)
    assert status == 101
    producers.enqueue("email.send", MAIL)
    assert first_frame_but_pings(sock)[0] == 1, "a signed-in socket receives the page"
    if ending == "sign-out":
        overview = browser.get(live_server + "/overview").text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', overview).group(1)
        browser.post(live_server + "/logout", data={"csrf_token": csrf}, allow_redirects=False)
        producers.enqueue("email.send", MAIL)  # a push is due: it must not go out
    else:
        users.set_password("vic", "a brand new password")  # a quiet socket: closed all the same
    sock.settimeout(8)
    opcode, payload = first_frame_but_pings(sock)
    assert opcode == 8 and struct.unpack(">H", payload[:2])[0] == 1008
    assert b"session has ended" in payload[2:]
    sock.close()


def test_a_reconnect_that_missed_nothing_gets_no_push_until_a_new_event(plain_http,
                                                                       live_server):
    cookie = session_cookie(live_server)
    producers.enqueue("email.send", MAIL)
    last_seen = registry.latest_events(1)[0]["id"]
    status, sock = handshake(live_server, f"page=overview&topic=all&last_id={last_seen}",
                             live_server, cookie)
    assert status == 101
    sock.settimeout(1.5)
    with pytest.raises(TimeoutError):  # the events up to last_id are not sent again
        first_frame_but_pings(sock)
    sock.settimeout(10)
    job_id = producers.enqueue("email.send", MAIL)
    opcode, payload = first_frame_but_pings(sock)
    new_id = registry.latest_events(1)[0]["id"]
    assert opcode == 1 and job_id in payload.decode()
    assert f'data-event-id="{new_id}"' in payload.decode()
    sock.close()


def test_an_open_socket_closes_with_a_reason_when_redis_goes_away(plain_http, own_redis,
                                                                   live_server):
    cookie = session_cookie(live_server)
    status, sock = handshake(live_server, "page=overview&topic=all", live_server, cookie)
    assert status == 101
    producers.enqueue("email.send", MAIL)
    assert first_frame_but_pings(sock)[0] == 1, "a push while Redis is up"
    own_redis.stop()
    sock.settimeout(15)
    opcode, payload = first_frame_but_pings(sock)
    assert opcode == 8, f"expected a close frame, got opcode {opcode}: {payload[:200]!r}"
    assert struct.unpack(">H", payload[:2])[0] == 1013  # try again later: the page reconnects
    assert b"Redis did not answer" in payload[2:]
    sock.close()
