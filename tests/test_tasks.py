"""Job handlers against real peers on loopback: Redis, an SMTP server, HTTP servers."""

from __future__ import annotations

import contextlib
import email
import ipaddress
import json
import os
import re
import socket
import threading
import time
from datetime import UTC, date, datetime
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import conftest
import pytest
import requests
import urllib3.util.connection
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from backstop import keys, metrics, outbound, registry
from backstop.contracts import JOBS, register_job
from backstop.errors import PermanentFailure
from backstop.jobs import HANDLERS, JobContext, load_handlers
from backstop.redis_server import free_port
from backstop.tasks import analytics, plugins, workflows
from backstop.tasks.ai import AiServiceError
from backstop.tasks.email import verify_otp
from backstop.tasks.plugins import WebhookError, sign, verify_signature

load_handlers()


# ---- helpers and peers ----
@pytest.fixture
def env(r):
    """apply_env for one test; the environment and settings are restored afterwards."""
    saved = dict(os.environ)
    yield conftest.apply_env
    os.environ.clear()
    os.environ.update(saved)
    conftest.apply_env()


def make_ctx(r, job_name: str, job_id: str = "job-1", attempt: int = 1,
             seconds: float = 10) -> JobContext:
    return JobContext(job_id=job_id, job_name=job_name, queue=JOBS[job_name].queue,
                      attempt=attempt, max_attempts=3, deadline=time.monotonic() + seconds,
                      redis=r)


def run(r, job_name: str, payload: dict, **ctx_options):
    """Validate the payload against its contract and call the handler directly."""
    model = JOBS[job_name].model.model_validate(payload)
    return HANDLERS[job_name](model, make_ctx(r, job_name, **ctx_options))


class Mailbox:
    """aiosmtpd handler keeping every envelope; RCPT to refuse@... answers 550."""

    def __init__(self):
        self.envelopes = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refuse@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def message(self, index: int = -1):
        return email.message_from_bytes(self.envelopes[index].content, policy=policy.default)


def _check_login(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"mailer" and auth_data.password == b"p@ss:word"
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp(env):
    """A real SMTP server on a free loopback port; SMTP_URL points at it."""
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port,
                            authenticator=_check_login, auth_require_tls=False)
    controller.start()
    mailbox.port = port
    env(SMTP_URL=f"smtp://127.0.0.1:{port}", MAIL_FROM="ops@backstop.test")
    yield mailbox
    controller.stop()


class Peer:
    """What the HTTP test server saw, and how it answers."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.reply: bytes | dict = b"ok"
        self.delay = 0.0
        self.headers: dict[str, str] = {}
        self.release = threading.Event()

    def json(self, index: int = -1) -> dict:
        return json.loads(self.requests[index]["body"])


def _handler_class(peer: Peer):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            peer.requests.append({"path": self.path, "headers": self.headers, "body": body})
            if peer.delay:
                peer.release.wait(peer.delay)
            reply = peer.reply if isinstance(peer.reply, bytes) else json.dumps(peer.reply)
            data = reply if isinstance(reply, bytes) else reply.encode()
            self.send_response(peer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in peer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def serve_peer():
    """A real ThreadingHTTPServer on a free loopback port, served from a thread."""
    peer = Peer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(peer))
    server.daemon_threads, server.block_on_close = True, False
    server.handle_error = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    peer.port = server.server_address[1]
    peer.url = f"http://127.0.0.1:{peer.port}"
    try:
        yield peer
    finally:
        peer.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_peer(env):
    """A webhook receiver on loopback, which WEBHOOK_ALLOW_PRIVATE=1 lets deliveries reach."""
    env(WEBHOOK_ALLOW_PRIVATE="1")
    with serve_peer() as peer:
        yield peer


@pytest.fixture
def internal_service(env):
    """A loopback HTTP service that webhooks must not reach (internal addresses refused)."""
    env(WEBHOOK_ALLOW_PRIVATE="0", WEBHOOK_ALLOWED_HOSTS="")
    with serve_peer() as peer:
        yield peer


# ---- email ----
def test_email_send_delivers_text_html_and_reply_to(r, smtp):
    result = run(r, "email.send", {
        "to": ["ann@example.com", "bob@example.com"], "subject": "Invoice 42",
        "text": "Your invoice is ready.", "html": "<p>Your <b>invoice</b> is ready.</p>",
        "reply_to": "billing@example.com"})
    assert len(smtp.envelopes) == 1
    envelope, message = smtp.envelopes[0], smtp.message()
    assert envelope.mail_from == "ops@backstop.test"
    assert envelope.rcpt_tos == ["ann@example.com", "bob@example.com"]
    assert message["Subject"] == "Invoice 42"
    assert message["Reply-To"] == "billing@example.com"
    assert message.get_body(("plain",)).get_content().strip() == "Your invoice is ready."
    assert "<b>invoice</b>" in message.get_body(("html",)).get_content()
    assert result["sent_to"] == ["ann@example.com", "bob@example.com"]


def test_email_send_logs_in_with_the_url_credentials(r, smtp, env):
    env(SMTP_URL=f"smtp://mailer:p%40ss%3Aword@127.0.0.1:{smtp.port}")
    run(r, "email.send", {"to": ["ann@example.com"], "subject": "hi", "text": "hello"})
    assert len(smtp.envelopes) == 1
    env(SMTP_URL=f"smtp://mailer:wrong@127.0.0.1:{smtp.port}")
    with pytest.raises(PermanentFailure) as failure:
        run(r, "email.send", {"to": ["ann@example.com"], "subject": "hi", "text": "hello"})
    assert failure.value.code == "smtp_auth"
    assert len(smtp.envelopes) == 1


def test_email_refused_recipient_is_permanent_and_down_server_is_retryable(r, smtp, env):
    with pytest.raises(PermanentFailure) as failure:
        run(r, "email.send", {"to": ["refuse@example.com"], "subject": "x", "text": "y"})
    assert "550" in str(failure.value)
    env(SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    with pytest.raises(OSError) as down:
        run(r, "email.send", {"to": ["ann@example.com"], "subject": "x", "text": "y"})
    assert not isinstance(down.value, PermanentFailure)
    assert smtp.envelopes == []


def test_otp_mails_a_code_that_verifies_once_and_is_stored_hashed(r, smtp, env):
    env(OTP_TTL_SECONDS="120")
    result = run(r, "email.otp.send", {"to": "Ann@Example.com", "purpose": "login"})
    assert smtp.envelopes[0].rcpt_tos == ["Ann@Example.com"]
    code = re.search(r"\b(\d{6})\b", smtp.message().get_body(("plain",)).get_content()).group(1)
    assert code not in json.dumps(result)
    stored = {k: r.dump(k) for k in r.scan_iter("*")}
    assert all(code.encode() not in (v or b"") for v in stored.values())
    assert 0 < r.ttl(keys.otp("login", "ann@example.com")) <= 120
    assert not verify_otp(r, "signup", "ann@example.com", code)
    assert verify_otp(r, "login", "ann@example.com", code)
    assert not verify_otp(r, "login", "ann@example.com", code)


def test_otp_is_discarded_after_five_wrong_guesses(r, smtp):
    run(r, "email.otp.send", {"to": "ann@example.com"})
    code = re.search(r"\b(\d{6})\b", smtp.message().get_body(("plain",)).get_content()).group(1)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert [verify_otp(r, "login", "ann@example.com", wrong) for _ in range(5)] == [False] * 5
    assert not verify_otp(r, "login", "ann@example.com", code)


def test_notification_fans_out_once_even_when_retried(r):
    payload = {"user_id": "u7", "title": "Build done", "body": "All green.",
               "channels": ["email", "webhook", "inbox"], "email": "ann@example.com",
               "webhook_url": "http://127.0.0.1:9/hook"}
    first = run(r, "email.notification.dispatch", payload, job_id="n-1")
    second = run(r, "email.notification.dispatch", payload, job_id="n-1", attempt=2)
    assert first["email"] == second["email"] == "n-1:email"
    mail = registry.get_job("n-1:email", r)
    assert (mail["job"], mail["payload"]["to"], mail["payload"]["subject"]) == (
        "email.send", ["ann@example.com"], "Build done")
    hook = registry.get_job("n-1:webhook", r)
    assert hook["job"] == "plugins.webhook.deliver"
    assert hook["payload"]["event"] == "notification"
    assert hook["payload"]["data"]["title"] == "Build done"
    assert r.zcard(keys.state_index("email", "waiting")) == 1
    assert r.zcard(keys.state_index("plugins", "waiting")) == 1
    inbox = [json.loads(item) for item in r.lrange(keys.notifications("u7"), 0, -1)]
    assert [(n["id"], n["title"], n["body"]) for n in inbox] == [
        ("n-1", "Build done", "All green.")]


# ---- plugins: webhooks ----
def test_webhook_delivery_posts_signed_json(r, http_peer):
    result = run(r, "plugins.webhook.deliver", {
        "url": f"{http_peer.url}/hooks/in", "event": "order.paid", "data": {"order": 42},
        "secret": "s3cret"}, job_id="d-1")
    seen = http_peer.requests[0]
    body = http_peer.json()
    assert seen["path"] == "/hooks/in"
    assert (body["event"], body["data"], body["delivery"]) == ("order.paid", {"order": 42}, "d-1")
    assert abs(body["timestamp"] - time.time()) < 5
    assert seen["headers"]["X-Backstop-Event"] == "order.paid"
    assert seen["headers"]["X-Backstop-Delivery"] == "d-1"
    header = seen["headers"]["X-Backstop-Signature"]
    assert verify_signature("s3cret", header, seen["body"])
    assert not verify_signature("other", header, seen["body"])
    assert result["status"] == 200 and result["signed"] and result["ms"] >= 0


def test_signature_rejects_tampered_body_and_stale_timestamp():
    now = int(time.time())
    header = sign("k", now, '{"a":1}')
    assert verify_signature("k", header, '{"a":1}')
    assert not verify_signature("k", header, '{"a":2}')
    assert not verify_signature("k", header, '{"a":1}', now=now + 301)
    assert not verify_signature("k", "garbage", '{"a":1}')


def test_webhook_falls_back_to_default_secret_or_says_unsigned(r, http_peer, env):
    env(WEBHOOK_SECRET="fallback")
    sub = plugins.subscribe(r, http_peer.url, ["e"])
    run(r, "plugins.webhook.deliver", {"url": http_peer.url, "event": "e", "webhook_id": sub})
    first = http_peer.requests[0]
    assert verify_signature("fallback", first["headers"]["X-Backstop-Signature"], first["body"])
    result = run(r, "plugins.webhook.deliver", {"url": http_peer.url, "event": "e"})
    assert http_peer.requests[1]["headers"]["X-Backstop-Signature"] is None, \
        "WEBHOOK_SECRET signs subscriptions' deliveries only"
    assert result["signed"] is False and "unsigned" in result["note"]


def test_a_stored_secret_never_signs_a_delivery_to_another_url(r, http_peer, env):
    env(WEBHOOK_SECRET="fallback")
    own = plugins.subscribe(r, "https://receiver.example/hook", ["e"], secret="victim-secret")
    bare = plugins.subscribe(r, "https://other.example/hook", ["e"])
    for sub in (own, bare):
        with pytest.raises(PermanentFailure, match="for another URL"):
            run(r, "plugins.webhook.deliver",
                {"url": http_peer.url, "event": "e", "webhook_id": sub})
    with pytest.raises(PermanentFailure, match="does not exist"):
        run(r, "plugins.webhook.deliver",
            {"url": http_peer.url, "event": "e", "webhook_id": "wh_gone"})
    assert http_peer.requests == [], "nothing was sent, signed or not"


def test_webhook_500_is_retryable_and_410_is_permanent(r, http_peer):
    http_peer.status, http_peer.reply = 500, b"database down"
    with pytest.raises(WebhookError, match="500: database down"):
        run(r, "plugins.webhook.deliver", {"url": http_peer.url, "event": "e"})
    sub = plugins.subscribe(r, http_peer.url, ["e"])
    http_peer.status = 410
    with pytest.raises(PermanentFailure) as failure:
        run(r, "plugins.webhook.deliver", {"url": http_peer.url, "event": "e", "webhook_id": sub})
    assert failure.value.code == "webhook_gone"
    assert plugins.subscriptions(r) == []


def test_webhook_slower_than_the_timeout_fails(r, http_peer, env):
    env(WEBHOOK_TIMEOUT_SECONDS="0.3")
    http_peer.delay = 3
    started = time.monotonic()
    with pytest.raises(WebhookError, match="did not answer within 0.3 s"):
        run(r, "plugins.webhook.deliver", {"url": http_peer.url, "event": "e"})
    assert time.monotonic() - started < 2


# ---- plugins: webhooks to internal addresses ----
def refused(r, url: str) -> str:
    """Deliver to url; assert a permanent refusal for an internal address; return the reason."""
    with pytest.raises(PermanentFailure) as failure:
        run(r, "plugins.webhook.deliver", {"url": url, "event": "e"})
    assert failure.value.code == "webhook_internal"
    return str(failure.value)


@pytest.mark.parametrize(("host", "reason"), [
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
    ("localhost", "localhost resolves to a loopback address"),
    ("LOCALHOST.", "resolves to a loopback address"),
    ("127.9.9.9", "is a loopback address"),
    ("2130706433", "is a loopback address"),  # decimal, read as 127.0.0.1
    ("0177.0.0.1", "is a loopback address"),  # octal
    ("[::ffff:127.0.0.1]", "is a loopback address"),  # IPv4-mapped IPv6
    ("[::1]", "is a loopback address"),
    ("0.0.0.0", "is an unspecified address"),  # Linux connects it to loopback
])
def test_a_webhook_to_loopback_is_refused_and_reaches_nothing(r, internal_service, host,
                                                             reason):
    message = refused(r, f"http://{host}:{internal_service.port}/hook")
    assert reason in message and "WEBHOOK_ALLOW_PRIVATE" in message
    assert internal_service.requests == []


def test_a_webhook_to_the_cloud_metadata_address_is_refused_before_connecting(r, env):
    env(WEBHOOK_ALLOW_PRIVATE="0")
    started = time.monotonic()
    assert "169.254.169.254 is a link-local address" in refused(
        r, "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    assert time.monotonic() - started < 1


def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(r, internal_service, env):
    env(WEBHOOK_ALLOWED_HOSTS="localhost")
    with serve_peer() as redirector:
        redirector.status = 307
        redirector.headers = {"Location": f"http://127.0.0.1:{internal_service.port}/steal"}
        message = refused(r, f"http://localhost:{redirector.port}/hook")
        assert len(redirector.requests) == 1
    assert "redirected to an internal address" in message and "is a loopback address" in message
    assert internal_service.requests == []


def test_a_redirect_elsewhere_is_not_followed_and_may_succeed_later(r, http_peer):
    http_peer.status, http_peer.headers = 308, {"Location": "https://93.184.215.14/new-hook"}
    with pytest.raises(WebhookError, match="308 redirecting to https://93.184.215.14/new-hook; "
                                           "redirects are not followed"):
        run(r, "plugins.webhook.deliver", {"url": http_peer.url, "event": "e"})
    assert len(http_peer.requests) == 1


def test_allowed_hosts_let_one_named_host_through(r, internal_service, env):
    env(WEBHOOK_ALLOWED_HOSTS="hooks.example, LocalHost")
    result = run(r, "plugins.webhook.deliver",
                 {"url": f"http://localhost:{internal_service.port}/in", "event": "e"})
    assert result["status"] == 200 and internal_service.requests[0]["path"] == "/in"
    refused(r, f"http://127.0.0.1:{internal_service.port}/in")
    assert len(internal_service.requests) == 1


def test_the_address_checked_is_the_address_connected_to(r, internal_service, monkeypatch):
    """DNS rebinding: a name answering a public address first and loopback afterwards."""
    real_lookup, real_connect = socket.getaddrinfo, urllib3.util.connection.create_connection
    lookups, public_tries = [], []

    def rebinding_dns(host, port, *args, **kwargs):
        if host == "rebind.example":
            lookups.append(host)
            host = "93.184.215.14" if len(lookups) == 1 else "127.0.0.1"
        return real_lookup(host, port, *args, **kwargs)

    def internet(address, *args, **kwargs):
        """The network: public hosts refuse (nothing leaves the machine), the rest is real."""
        for *_, sockaddr in socket.getaddrinfo(address[0], address[1]):
            ip = sockaddr[0]
            if outbound.internal_kind(ipaddress.ip_address(ip)) is None:
                public_tries.append(ip)
                raise ConnectionRefusedError(f"{ip} refused")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    monkeypatch.setattr(urllib3.util.connection, "create_connection", internet)
    with pytest.raises(WebhookError, match="unreachable"):
        run(r, "plugins.webhook.deliver",
            {"url": f"http://rebind.example:{internal_service.port}/", "event": "e"})
    assert lookups == ["rebind.example"] and set(public_tries) == {"93.184.215.14"}
    assert internal_service.requests == []


@pytest.mark.parametrize(("address", "kind"), [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "not globally reachable"), ("198.51.100.7", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fd00:ec2::254", "private"),
    ("224.0.0.251", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "private"),
    ("::", "unspecified"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"), ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("93.184.215.14", None), ("2606:4700:4700::1111", None), ("8.8.8.8", None),
])
def test_internal_kind_names_every_internal_range(address, kind):
    found = outbound.internal_kind(ipaddress.ip_address(address))
    assert (found is None) if kind is None else (kind in found)


def test_subscriptions_keep_secrets_out_of_listings(r):
    sub = plugins.subscribe(r, "https://example.com/h", ["a.b", "c"], secret="hidden")
    assert plugins.subscriptions(r) == [{
        "id": sub, "url": "https://example.com/h", "events": ["a.b", "c"],
        "created_at": pytest.approx(time.time(), abs=5), "signed": True}]
    with pytest.raises(ValueError, match="http"):
        plugins.subscribe(r, "ftp://example.com", ["a"])
    with pytest.raises(ValueError, match="events"):
        plugins.subscribe(r, "https://example.com", [])
    assert plugins.unsubscribe(r, sub) and not plugins.unsubscribe(r, sub)


def test_event_dispatch_enqueues_one_signed_delivery_per_subscriber(r, http_peer):
    paid = plugins.subscribe(r, f"{http_peer.url}/paid", ["order.paid"], secret="k-paid")
    every = plugins.subscribe(r, f"{http_peer.url}/all", ["*"])
    plugins.subscribe(r, f"{http_peer.url}/other", ["order.refunded"])
    event = {"event": "order.paid", "data": {"order": 7}}
    result = run(r, "plugins.event.dispatch", event, job_id="ev-1")
    run(r, "plugins.event.dispatch", event, job_id="ev-1", attempt=2)
    assert result["delivered_to"] == 2 and set(result["webhooks"]) == {paid, every}
    assert r.zcard(keys.state_index("plugins", "waiting")) == 2
    job = registry.get_job(f"ev-1:{paid}", r)
    assert "secret" not in job["payload"]
    run(r, job["job"], job["payload"], job_id=job["id"])
    seen = http_peer.requests[0]
    assert seen["path"] == "/paid" and http_peer.json()["data"] == {"order": 7}
    assert verify_signature("k-paid", seen["headers"]["X-Backstop-Signature"], seen["body"])


# ---- plugins: registry ----
def test_plugins_execute_runs_registered_callables(r):
    assert run(r, "plugins.execute", {"plugin": "echo", "args": {"x": [1, 2]}}) == {"x": [1, 2]}

    @plugins.register_plugin("test.double")
    def double(args, ctx):
        return {"value": args["n"] * 2, "job": ctx.job_id}

    assert run(r, "plugins.execute", {"plugin": "test.double", "args": {"n": 21}},
               job_id="p-1") == {"value": 42, "job": "p-1"}
    with pytest.raises(PermanentFailure, match=r"'nope'.*echo.*test\.double") as failure:
        run(r, "plugins.execute", {"plugin": "nope"})
    assert failure.value.code == "unknown_plugin"


# ---- workflows ----
calls: list[dict] = []
flaky_state = {"fail": True}


@plugins.register_plugin("test.record")
def _record(args, ctx):
    calls.append(args)
    return {"seen": args}


@plugins.register_plugin("test.flaky")
def _flaky(args, ctx):
    if flaky_state["fail"]:
        raise RuntimeError("downstream said no")
    return "fine"


def _step(run_id: str, index: int, r, suffix: str = "", attempt: int = 1):
    job = registry.get_job(f"{run_id}:step:{index}{suffix}", r)
    assert job is not None, f"step {index}{suffix} was not enqueued"
    return run(r, job["job"], job["payload"], job_id=job["id"], attempt=attempt)


def test_workflow_runs_its_steps_in_order_once_each(r):
    calls.clear()
    steps = [{"job": "plugins.execute", "payload": {"plugin": "test.record", "args": {"n": n}}}
             for n in (1, 2)]
    run(r, "workflows.dispatch", {"name": "pair", "steps": steps, "run_id": "wf-1"})
    assert [s["status"] for s in workflows.get_run(r, "wf-1")["steps"]] == ["pending"] * 2
    _step("wf-1", 0, r)
    assert _step("wf-1", 0, r)["skipped"] is True
    assert registry.get_job("wf-1:step:2", r) is None
    _step("wf-1", 1, r)
    state = workflows.get_run(r, "wf-1")
    assert state["status"] == "completed"
    assert [s["result"] for s in state["steps"]] == [{"seen": {"n": 1}}, {"seen": {"n": 2}}]
    assert calls == [{"n": 1}, {"n": 2}]
    _step("wf-1", 0, r, attempt=2)
    again = workflows.get_run(r, "wf-1")
    assert (again["status"], again["current"], len(calls)) == ("completed", 1, 2)


def test_workflow_failed_step_is_recorded_and_retry_finishes_the_run(r):
    flaky_state["fail"] = True
    steps = [{"job": "plugins.execute", "payload": {"plugin": "echo"}},
             {"job": "plugins.execute", "payload": {"plugin": "test.flaky"}}]
    run(r, "workflows.dispatch", {"name": "flaky", "steps": steps}, job_id="wf-2")
    _step("wf-2", 0, r)
    with pytest.raises(RuntimeError):
        _step("wf-2", 1, r)
    state = workflows.get_run(r, "wf-2")
    assert (state["status"], state["steps"][1]["status"]) == ("running", "failed")
    with pytest.raises(RuntimeError):
        _step("wf-2", 1, r, attempt=3)
    state = workflows.get_run(r, "wf-2")
    assert state["status"] == "failed"
    assert state["steps"][1]["error"]["message"] == "downstream said no"
    flaky_state["fail"] = False
    assert run(r, "workflows.retry", {"run_id": "wf-2"})["job_id"] == "wf-2:step:1:retry:1"
    _step("wf-2", 1, r, suffix=":retry:1")
    state = workflows.get_run(r, "wf-2")
    assert state["status"] == "completed" and state["steps"][1]["result"] == "fine"
    with pytest.raises(PermanentFailure, match="only a failed step"):
        run(r, "workflows.retry", {"run_id": "wf-2", "step_index": 1})


def test_workflow_with_a_bad_step_fails_before_anything_runs(r):
    bad = [{"job": "plugins.execute", "payload": {"plugin": "echo"}},
           {"job": "email.send", "payload": {"to": ["ann@example.com"], "text": "x"}}]
    with pytest.raises(PermanentFailure, match=r"step 1.*subject"):
        run(r, "workflows.dispatch", {"name": "bad", "steps": bad, "run_id": "wf-3"})
    with pytest.raises(PermanentFailure, match="no.such"):
        run(r, "workflows.dispatch", {"name": "bad", "steps": [{"job": "no.such"}]})
    assert workflows.get_run(r, "wf-3") is None
    assert registry.get_job("wf-3:step:0", r) is None


def test_permanent_step_failure_fails_the_run_at_once(r):
    steps = [{"job": "plugins.execute", "payload": {"plugin": "missing"}}]
    run(r, "workflows.dispatch", {"name": "m", "steps": steps, "run_id": "wf-4"})
    with pytest.raises(PermanentFailure):
        _step("wf-4", 0, r)
    state = workflows.get_run(r, "wf-4")
    assert state["status"] == "failed" and state["steps"][0]["error"]["code"] == "unknown_plugin"


# ---- analytics ----
def _seed_email_queue(r, waiting: int, completed_total: int) -> None:
    r.delete(keys.state_index("email", "waiting"))
    r.zadd(keys.state_index("email", "waiting"), {f"j{i}": i for i in range(waiting)})
    r.hset(keys.queue_stats("email"), mapping={"enqueued": 10, "completed": completed_total})


def test_hourly_snapshot_records_counts_counters_and_hourly_increase(r):
    _seed_email_queue(r, waiting=3, completed_total=6)
    r.zadd(keys.state_index("ai", "dead"), {"x": 1})
    run(r, "analytics.snapshot.hourly", {"hour": "2024-05-01T10:42:00Z"})
    first = r.hgetall(keys.metrics_hourly("2024050110"))
    assert (first["email:state:waiting"], first["ai:state:dead"]) == ("3", "1")
    assert (first["email:total:enqueued"], first["email:total:retried"]) == ("10", "0")
    assert "email:delta:completed" not in first
    assert 13 * 86_400 < r.ttl(keys.metrics_hourly("2024050110")) <= 14 * 86_400
    _seed_email_queue(r, waiting=1, completed_total=9)
    result = run(r, "analytics.snapshot.hourly", {"hour": "2024-05-01T13:05:00+02:00"})
    second = r.hgetall(keys.metrics_hourly("2024050111"))
    assert result["hour"] == "2024050111"
    assert (second["email:state:waiting"], second["email:delta:completed"]) == ("1", "3")


def test_hourly_snapshot_defaults_to_the_current_utc_hour_and_rolls_up_the_metrics(r):
    previous_hour = int(time.time() // 3600) - 1
    r.hset(keys.metrics_minute("email", previous_hour * 60 + 7), "email.send|ok|3|1", 5)
    result = run(r, "analytics.snapshot.hourly", {})
    label = analytics.hour_label(datetime.now(UTC))
    assert r.hget(keys.metrics_hourly(label), "email:state:waiting") == "0"
    assert result["metrics_hours_rolled_up"] == 48 * 6, "each queue's kept finished hours"
    assert r.hget(keys.metrics_hour("email", previous_hour), "email.send|ok|3|1") == "5"


def test_daily_aggregate_folds_the_days_snapshots(r):
    for hour, waiting, completed in (("2024-05-01T01:00Z", 4, 6), ("2024-05-01T02:00Z", 2, 9)):
        _seed_email_queue(r, waiting, completed)
        analytics.take_snapshot(r, datetime.fromisoformat(hour))
    analytics.take_snapshot(r, datetime.fromisoformat("2024-05-02T00:00Z"))
    assert run(r, "analytics.aggregate.daily", {"day": "2024-05-01"}) == {
        "day": "20240501", "hours": 2}
    day = r.hgetall(keys.metrics_daily("20240501"))
    assert (day["hours"], day["email:state:waiting"], day["email:state:waiting:max"]) == (
        "2", "6", "4")
    assert (day["email:total:completed"], day["email:delta:completed"]) == ("9", "3")
    assert 399 * 86_400 < r.ttl(keys.metrics_daily("20240501")) <= 400 * 86_400


def test_recompute_range_rebuilds_every_day_it_touches(r):
    _seed_email_queue(r, waiting=5, completed_total=1)
    analytics.take_snapshot(r, datetime.fromisoformat("2024-05-01T23:00Z"))
    analytics.take_snapshot(r, datetime.fromisoformat("2024-05-02T01:00Z"))
    r.hset(keys.metrics_daily("20240502"), mapping={"email:state:waiting": 999, "hours": 9})
    r.hset(keys.metrics_daily("20240503"), mapping={"hours": 1})
    r.hset(keys.metrics_daily("20240504"), mapping={"hours": 1})
    result = run(r, "analytics.recompute.range",
                 {"start": "2024-05-01T22:00Z", "end": "2024-05-04T00:00Z"})
    assert [d["day"] for d in result["days"]] == ["20240501", "20240502", "20240503"]
    assert r.hget(keys.metrics_daily("20240502"), "email:state:waiting") == "5"
    assert not r.exists(keys.metrics_daily("20240503"))
    assert r.exists(keys.metrics_daily("20240504"))
    assert analytics.days_touched(datetime(2024, 5, 1), datetime(2024, 5, 2)) == [date(2024, 5, 1)]


# ---- system ----
def test_cache_invalidate_by_name_and_all_stays_inside_the_cache_space(r, env):
    env(BACKSTOP_PREFIX="bs?x")
    r.mset({keys.cache("a"): 1, keys.cache("b"): 2, keys.cache("c"): 3,
            keys.job("a"): 4, "bsAx:cache:foreign": 5})
    assert run(r, "system.cache.invalidate", {"names": ["a", "zzz"]})["deleted"] == 1
    assert not r.exists(keys.cache("a")) and r.exists(keys.cache("b"))
    assert run(r, "system.cache.invalidate", {"all": True})["deleted"] == 2
    assert r.exists(keys.job("a"), "bsAx:cache:foreign") == 2
    with pytest.raises(PermanentFailure, match="nothing to invalidate"):
        run(r, "system.cache.invalidate", {})


def test_index_rebuild_restores_indexes_from_records(r):
    pipe = r.pipeline()
    for i in range(620):
        queue, state = ("email", "waiting") if i % 2 else ("ai", "dead")
        pipe.hset(keys.job(f"j{i}"), mapping={"id": f"j{i}", "queue": queue, "state": state,
                                                "updated_at": 1_700_000_000.5 + i})
    pipe.hset(keys.job("odd"), mapping={"id": "odd", "queue": "email", "state": "lost",
                                         "updated_at": 1})
    pipe.set(keys.job("not-a-hash"), "x")
    pipe.zadd(keys.state_index("email", "waiting"), {"ghost": 1})
    pipe.zadd(keys.state_index("email", "active"), {"j1": 1})
    pipe.execute()
    result = run(r, "system.index.rebuild", {"target": "jobs"})["jobs"]
    assert result["by_state"]["waiting"] == 310 and result["by_state"]["dead"] == 310
    assert (result["indexed"], result["skipped"]) == (620, 1)
    waiting = r.zrange(keys.state_index("email", "waiting"), 0, -1, withscores=True)
    assert len(waiting) == 310 and ("j1", 1_700_000_001.5) in waiting
    assert r.zscore(keys.state_index("email", "waiting"), "ghost") is None
    assert not r.exists(keys.state_index("email", "active"))
    assert r.zscore(keys.state_index("ai", "dead"), "j618") == 1_700_000_618.5


def test_health_check_judges_records_the_backlog_and_logs_it(r):
    r.zadd(keys.state_index("email", "waiting"), {"a": 1, "b": 2})  # waiting since 1970
    r.zadd(keys.workers(), {"stale": time.time() - 100})
    r.rpush(keys.health_log(), *["old"] * 1_000)
    unhealthy = run(r, "system.health.check", {})
    assert unhealthy["status"] == "unhealthy" and unhealthy["workers"] == 0
    found = {(i["code"], i["queue"], i["severity"]) for i in unhealthy["issues"]}
    assert found == {("no_workers", "email", "critical"), ("oldest_waiting", "email", "critical")}
    assert all(i["recommendation"] for i in unhealthy["issues"])
    assert unhealthy["queues"]["email"]["waiting"] == 2 and unhealthy["redis"]["ping_ms"] < 100
    assert unhealthy["redis"]["used_memory"] > 0 and unhealthy["redis"]["uptime_seconds"] >= 0
    assert json.loads(r.lindex(keys.health_log(), 0)) == unhealthy
    assert r.llen(keys.health_log()) == 1_000
    minute = metrics.minute_of(unhealthy["checked_at"])
    assert r.hget(keys.metrics_minute("email", minute), "backlog") == "2"
    assert r.hget(keys.metrics_minute("ai", minute), "backlog") == "0"
    r.delete(keys.state_index("email", "waiting"))
    r.sadd(keys.paused(), "ai")  # paused before pauses were timed: timed from now on
    healthy = run(r, "system.health.check", {})
    assert healthy["status"] == "healthy"
    assert float(r.hget(keys.paused_since(), "ai")) == healthy["checked_at"]
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        degraded = run(r, "system.health.check", {})
    finally:
        r.config_set("maxmemory-policy", "noeviction")
    assert degraded["status"] == "degraded"
    assert [i["code"] for i in degraded["issues"]] == ["eviction_policy"]


# ---- ai ----
def _completion(text: str) -> dict:
    return {"id": "c1", "model": "served-model", "usage": {"total_tokens": 12},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


@pytest.fixture
def ai(env, http_peer):
    env(AI_API_URL=f"{http_peer.url}/v1/", AI_API_KEY="key-1", AI_MODEL="test-model")
    return http_peer


def test_ai_without_endpoint_fails_permanently_before_any_network_call(r, env, monkeypatch):
    env(AI_API_URL="")

    def no_network(*args, **kwargs):
        raise AssertionError("an AI job touched the network without AI_API_URL")

    monkeypatch.setattr(requests.Session, "request", no_network)
    for name, payload in (("ai.content.generate", {"prompt": "hi"}),
                          ("ai.score.rerun", {"content_id": "c", "content": "x"})):
        with pytest.raises(PermanentFailure, match="AI_API_URL is not set") as failure:
            run(r, name, payload)
        assert failure.value.code == "ai_not_configured"


def test_ai_generate_sends_an_openai_chat_request(r, ai):
    ai.reply = _completion("  A short poem.  ")
    result = run(r, "ai.content.generate", {"prompt": "Write a poem", "language": "fr",
                                            "max_tokens": 123})
    seen, body = ai.requests[0], ai.json()
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == "Bearer key-1"
    assert (body["model"], body["max_tokens"]) == ("test-model", 123)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "Write a poem"
    assert "'fr'" in body["messages"][0]["content"]
    assert result == {"text": "A short poem.", "model": "served-model",
                      "usage": {"total_tokens": 12}}


def test_ai_seo_returns_title_description_keywords(r, ai):
    reply = {"title": "Queue ops", "description": "Run jobs well.", "keywords": ["jobs", "dlq"]}
    ai.reply = _completion(f"```json\n{json.dumps(reply)}\n```")
    result = run(r, "ai.seo.optimize", {"content": "About queues", "keywords": ["redis"]})
    assert "Focus keywords: redis" in ai.json()["messages"][1]["content"]
    assert (result["title"], result["description"], result["keywords"]) == (
        "Queue ops", "Run jobs well.", ["jobs", "dlq"])
    ai.reply = _completion("Sorry, I cannot.")
    with pytest.raises(AiServiceError, match="SEO JSON"):
        run(r, "ai.seo.optimize", {"content": "About queues"})


def test_ai_translate_and_score(r, ai):
    ai.reply = _completion("Bonjour")
    result = run(r, "ai.translate", {"text": "Hello", "target_language": "fr",
                                     "source_language": "en"})
    assert result["text"] == "Bonjour" and "'fr'" in ai.json()["messages"][0]["content"]
    ai.reply = _completion("87/100 - clear and accurate, thin on examples.")
    scored = run(r, "ai.score.rerun", {"content_id": "post-9", "content": "Some text"})
    assert (scored["score"], scored["content_id"]) == (87, "post-9")
    ai.reply = _completion("It is rather good.")
    with pytest.raises(AiServiceError, match="no score"):
        run(r, "ai.score.rerun", {"content_id": "post-9", "content": "Some text"})


def test_ai_rejections_are_permanent_and_overload_is_retryable(r, ai, env):
    ai.status, ai.reply = 401, {"error": {"message": "invalid api key"}}
    with pytest.raises(PermanentFailure, match="401.*invalid api key") as failure:
        run(r, "ai.translate", {"text": "Hello", "target_language": "de"})
    assert failure.value.code == "ai_http_401"
    ai.status, ai.reply = 503, {"error": "overloaded"}
    with pytest.raises(AiServiceError, match="503"):
        run(r, "ai.translate", {"text": "Hello", "target_language": "de"})
    env(AI_API_KEY="")
    ai.status, ai.reply = 200, _completion("Hallo")
    assert run(r, "ai.translate", {"text": "Hello", "target_language": "de"})["text"] == "Hallo"
    assert ai.requests[-1]["headers"]["Authorization"] is None


def test_names_and_ids_with_a_final_newline_are_refused(r):
    with pytest.raises(ValueError, match="events"):
        plugins.subscribe(r, "https://example.com/h", ["order.paid\n"])
    with pytest.raises(ValueError, match="plugin name"):
        plugins.register_plugin("echo2\n")
    with pytest.raises(ValueError, match="job name"):
        register_job("my.job\n", "system", JOBS["system.health.check"].model)
    assert "my.job\n" not in JOBS and "echo2\n" not in plugins.PLUGINS
    steps = [{"job": "system.health.check"}]
    with pytest.raises(PermanentFailure) as failure:
        run(r, "workflows.dispatch", {"name": "w", "steps": steps, "run_id": "run-1\n"})
    assert failure.value.code == "invalid_run_id"
