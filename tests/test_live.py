"""The live-event hub against a real Redis: ordering, topics, catch-up, lagging, reconnects."""

from __future__ import annotations

import threading
import time

import pytest

from backstop import dlq_maintenance, keys, live, producers, queues, registry
from backstop.connection import client
from tests.chaos import OwnRedis
from tests.conftest import apply_env, wait_for

EMAIL = {"to": ["a@example.com"], "subject": "s", "text": "t"}


@pytest.fixture
def make_hub(r):
    """Hubs built by a test, closed after it (their pub/sub connections with them)."""
    hubs: list[live.Hub] = []

    def make(**options) -> live.Hub:
        hubs.append(live.Hub(**options))
        return hubs[-1]

    yield make
    for hub in hubs:
        hub.close()


def enqueue(n: int = 1, **options) -> list[str]:
    return [producers.enqueue("email.send", EMAIL, **options) for _ in range(n)]


def take(sub: live.Subscription, n: int, timeout: float = 5.0) -> list[dict]:
    """Exactly n events from a subscription; fails if they do not come in time."""
    events, deadline = [], time.monotonic() + timeout
    while len(events) < n and time.monotonic() < deadline:
        event = sub.get(timeout=max(0.0, deadline - time.monotonic()))
        if event is not None:
            events.append(event)
    assert len(events) == n, f"got {len(events)} of {n} events: {events[-3:]}"
    return events


def stream_ids(r, after: str = "-") -> list[str]:
    return [xid for xid, _ in r.xrange(keys.events_stream(), min=after)]


def pubsub_clients(r) -> list[dict]:
    """The live hubs' pub/sub connections (not the kill switch's, backstop.modes)."""
    return [c for c in r.client_list()
            if (int(c.get("sub", 0)) or int(c.get("psub", 0)) or "P" in c.get("flags", ""))
            and not c.get("name", "").startswith("backstop-mode-")]


def test_subscriber_gets_events_published_after_it_subscribed_in_order(r, make_hub):
    enqueue(2)
    sub = make_hub(latest=0).subscribe()
    job_ids = enqueue(3)
    queues.pause("email")
    events = take(sub, 4)
    assert [e["type"] for e in events] == ["queued"] * 3 + ["paused"]
    assert [e["job_id"] for e in events[:3]] == job_ids
    assert [e["id"] for e in events] == stream_ids(r)[-4:]
    assert sub.get(timeout=0.1) is None


def test_a_batch_enqueue_reaches_subscribers_as_one_event_per_job_in_order(r, make_hub):
    sub = make_hub(latest=0).subscribe()
    job_ids = producers.enqueue_many([{"job": "email.send", "payload": EMAIL}] * 4)
    events = take(sub, 4)
    assert [(e["type"], e["job_id"]) for e in events] == [("queued", j) for j in job_ids]
    assert [e["id"] for e in events] == stream_ids(r)[-4:]
    assert sub.get(timeout=0.1) is None


def test_topics_get_only_their_events(r, make_hub):
    hub = make_hub()
    everything = hub.subscribe(live.Topic())
    email = hub.subscribe(live.Topic(queue="email"))
    ai = hub.subscribe(live.Topic(queue="ai"))
    job = hub.subscribe(live.Topic(job_id="job-1"))
    enqueue(job_id="job-1")
    enqueue(job_id="job-2")
    registry.report_progress("job-1", "email", "email.send", 50, "half way")
    queues.pause("ai")
    dlq_maintenance.publish("alert", severity="warning", source="dlq")
    seen = {name: [(e["type"], e.get("job_id") or e.get("queue")) for e in take(sub, n)]
            for name, sub, n in [("all", everything, 5), ("email", email, 3), ("ai", ai, 1),
                                 ("job", job, 2)]}
    assert seen["all"][-1] == ("alert", None)
    assert seen["email"] == [("queued", "job-1"), ("queued", "job-2"), ("progress", "job-1")]
    assert seen["ai"] == [("paused", "ai")]
    assert seen["job"] == [("queued", "job-1"), ("progress", "job-1")]
    assert all(s.get(timeout=0.1) is None for s in (everything, email, ai, job))


def test_unknown_queue_topic_is_refused():
    with pytest.raises(ValueError, match="unknown queue 'nope'"):
        live.Topic(queue="nope")


def test_reconnect_with_last_id_gets_exactly_what_it_missed_while_events_keep_coming(
        r, make_hub):
    hub, total = make_hub(latest=0), 300
    first = hub.subscribe()
    publisher = threading.Thread(target=lambda: [enqueue() or time.sleep(0.001)
                                                 for _ in range(total)])
    publisher.start()
    before = take(first, 40)
    first.close()
    second = hub.subscribe(last_id=before[-1]["id"])
    published_at_subscribe = r.xlen(keys.events_stream())
    publisher.join()
    after = take(second, total - 40)
    assert published_at_subscribe < total, "the publisher should still be running"
    assert [e["id"] for e in before + after] == stream_ids(r)
    assert not second.resync and second.get(timeout=0.1) is None


def test_the_seam_between_backlog_and_live_feed(r, make_hub, monkeypatch):
    """Events published just before and just after the backlog read arrive once each."""
    hub = make_hub()
    old = enqueue(3)
    real = registry.recent_events

    def racing(after: str = "0", count: int = 100) -> list[dict]:
        fanned_out = hub.stats()["events"] + 2
        enqueue(job_id="in-backlog-and-live")
        page = real(after=after, count=count)
        enqueue(job_id="live-only")
        # Both are live before the backlog is handed over: the hub must already hold them.
        wait_for(lambda: hub.stats()["events"] >= fanned_out, timeout=5, what="the fan-out")
        monkeypatch.setattr(registry, "recent_events", real)
        return page

    hub.subscribe()  # starts the listener, so the racing events are live too
    last_id = stream_ids(r)[0]
    monkeypatch.setattr(registry, "recent_events", racing)
    sub = hub.subscribe(last_id=last_id)
    events = take(sub, 4)
    assert [e["job_id"] for e in events] == old[1:] + ["in-backlog-and-live", "live-only"]
    assert sub.get(timeout=0.2) is None


def test_latest_events_arrive_on_connect_without_last_id(r, make_hub):
    enqueue(25)
    queues.pause("ai")
    queues.resume("ai")
    enqueue(5)
    hub = make_hub(latest=20)
    everything = hub.subscribe()
    assert [e["id"] for e in take(everything, 20)] == stream_ids(r)[-20:]
    assert [e["type"] for e in take(hub.subscribe(live.Topic(queue="ai")), 2)] == [
        "paused", "resumed"]
    assert everything.get(timeout=0.1) is None


def test_unusable_last_id_gets_the_latest_and_resync(r, make_hub):
    enqueue(3)
    hub = make_hub(latest=2)
    for last_id in ("garbage", "1-0", "99999999999999-0"):
        sub = hub.subscribe(last_id=last_id)
        assert [e["id"] for e in take(sub, 2)] == stream_ids(r)[-2:]
        assert sub.resync and sub.get(timeout=0.05) is None


def test_stuck_subscriber_is_dropped_while_49_others_get_everything(r, make_hub):
    hub = make_hub(queue_size=100)
    stuck = hub.subscribe()
    readers = [hub.subscribe() for _ in range(49)]
    got: list[list[str]] = [[] for _ in readers]

    def read(sub: live.Subscription, into: list[str]) -> None:
        for event in sub.events(timeout=0.2):
            if event:
                into.append(event["id"])

    threads = [threading.Thread(target=read, args=pair) for pair in zip(readers, got, strict=True)]
    for thread in threads:
        thread.start()
    for batch in range(1, 6):
        producers.enqueue_many([{"job": "email.send", "payload": EMAIL}] * 60)
        wait_for(lambda n=batch * 60: all(len(ids) == n for ids in got), timeout=5,
                 what=f"49 readers to get {batch * 60} events")
    assert stuck.lagging and stuck.closed and stuck.get(timeout=0) is None
    assert hub.stats()["subscribers"] == 49 and hub.stats()["lagging"] == 1
    assert all(ids == stream_ids(r) for ids in got)
    for sub in readers:
        sub.close()
    for thread in threads:
        thread.join(2)
    assert hub.stats()["subscribers"] == 0


def test_one_pubsub_connection_per_process_however_many_subscribers(r, make_hub):
    wait_for(lambda: not pubsub_clients(r), timeout=5, what="earlier hubs to disconnect")
    hub = make_hub()
    subs = [hub.subscribe(live.Topic(queue="email")) for _ in range(10)]
    subs += [hub.subscribe(live.Topic(job_id=f"job-{i}")) for i in range(10)]
    clients = pubsub_clients(r)
    assert len(clients) == 1, clients
    assert clients[0]["name"] == f"backstop-live-{hub.pid}"
    assert hub.stats()["subscribers"] == 20


def test_events_survive_a_killed_pubsub_connection(r, make_hub, monkeypatch):
    monkeypatch.setattr(live, "BACKOFF", (0.5, 5.0))  # time to publish while it is down
    hub = make_hub()
    sub = hub.subscribe()
    enqueue()
    take(sub, 1)
    r.client_kill_filter(_type="pubsub")
    wait_for(lambda: not hub.stats()["connected"], timeout=5, what="the hub to notice")
    during = enqueue(3)  # nobody is subscribed: only the stream has them
    wait_for(lambda: hub.stats()["reconnects"] == 1 and hub.stats()["connected"], timeout=5,
             what="the hub to resubscribe")
    after = enqueue(3)
    events = take(sub, 6)
    assert [e["job_id"] for e in events] == during + after
    assert [e["id"] for e in events] == stream_ids(r)[1:]
    assert sub.get(timeout=0.1) is None
    assert len(pubsub_clients(r)) == 1


def test_close_ends_subscriptions_and_the_accessor_reuses_one_hub(r):
    shared = live.hub()
    assert live.hub() is shared
    sub = shared.subscribe()
    shared.close()
    assert sub.closed and sub.get(timeout=1) is None and list(sub.events(0.1)) == []
    assert live.hub() is not shared
    live.hub().close()
    with pytest.raises(RuntimeError, match="closed"):
        shared.subscribe()


# ---- pump: what the live socket runs ----

class CountingSubscription:
    """A real Subscription whose get() calls are counted (to prove the pump does not spin)."""

    def __init__(self, sub: live.Subscription):
        self.sub, self.gets = sub, 0

    def get(self, timeout: float | None = None) -> dict | None:
        self.gets += 1
        return self.sub.get(timeout)

    @property
    def closed(self) -> bool:
        return self.sub.closed

    @property
    def lagging(self) -> bool:
        return self.sub.lagging


def event_ids(events: list[dict]) -> str:
    """A push that names the events it folded."""
    return " ".join(event["id"] for event in events)


class PumpRun:
    """live.pump in a thread: what it sent (time, text), how it ended, what it raised."""

    def __init__(self, sub, render=event_ids, alive=None, **options):
        self.sent: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.ended: str | None = None
        self.error: BaseException | None = None
        alive = alive or (lambda urgent: not self.stop.is_set())
        self.thread = threading.Thread(target=self._run, args=(sub, render, alive, options),
                                       daemon=True)
        self.thread.start()

    def _run(self, sub, render, alive, options) -> None:
        try:
            self.ended = live.pump(sub, lambda text: self.sent.append((time.monotonic(), text)),
                                   render, alive, **options)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def finish(self, timeout: float) -> bool:
        """Whether the pump ended by itself within timeout; then stops it regardless."""
        self.thread.join(timeout)
        ended = not self.thread.is_alive()
        self.stop.set()
        self.thread.join(5)
        return ended

    def ids(self) -> list[str]:
        return [xid for _, text in self.sent for xid in text.split()]


@pytest.mark.parametrize("closing", ["hub closed", "lagging"])
def test_the_pump_leaves_at_once_when_its_subscription_is_closed(r, make_hub, closing):
    hub = make_hub(latest=0, queue_size=5)
    sub = CountingSubscription(hub.subscribe())
    if closing == "hub closed":
        hub.close()
    else:
        enqueue(10)
        wait_for(lambda: sub.lagging, timeout=5, what="the subscriber to be dropped")
    started = time.monotonic()
    run = PumpRun(sub, idle=1.0)
    assert run.finish(timeout=2), f"the pump spun on a closed subscription: {sub.gets} gets"
    assert time.monotonic() - started < 0.5 and sub.gets <= 2
    assert run.ended == ("closed" if closing == "hub closed" else "lagging") and not run.sent


def publish_steadily(per_second: int, seconds: float) -> None:
    start = time.monotonic()
    for i in range(int(per_second * seconds)):
        time.sleep(max(0.0, start + i / per_second - time.monotonic()))
        enqueue()


def test_a_steady_stream_of_events_still_gets_a_push_several_times_a_second(r, make_hub):
    sub = make_hub(latest=0).subscribe()
    run = PumpRun(sub)
    started = time.monotonic()
    publish_steadily(per_second=200, seconds=3)
    ended = time.monotonic()
    wait_for(lambda: len(run.ids()) == 600, timeout=5, what="every event to be pushed")
    assert run.finish(timeout=0) is False and run.error is None
    during = [at for at, _ in run.sent if at <= ended]
    gaps = [b - a for a, b in zip([started, *during], [*during, ended], strict=True)]
    assert len(during) >= 6 and max(gaps) < 1.0, f"{len(during)} pushes, gaps {gaps}"
    assert run.ids() == stream_ids(r), "each event in one push, in order"
    assert max(len(text.split()) for _, text in run.sent) <= live.BATCH_SIZE


def test_a_pump_resumed_with_last_id_pushes_exactly_the_events_after_it(r, make_hub):
    enqueue(5)
    last_id = stream_ids(r)[-1]
    enqueue(3)
    run = PumpRun(make_hub(latest=20).subscribe(last_id=last_id))
    wait_for(lambda: run.sent, timeout=5, what="the first push")
    enqueue(2)
    wait_for(lambda: len(run.ids()) >= 5, timeout=5, what="the live events")
    assert run.finish(timeout=0) is False and run.error is None
    assert run.ids() == stream_ids(r)[5:], "the 3 missed, then the 2 live; none before"


def test_the_pump_ends_without_spinning_or_raising_when_redis_goes_away(r, make_hub, tmp_path):
    own = OwnRedis(tmp_path / "redis")
    try:
        apply_env(REDIS_URL=own.url)
        sub = CountingSubscription(make_hub().subscribe())
        checked = [0.0]

        def alive(urgent: bool) -> bool:  # asks Redis now and then, as the session check does
            if urgent or time.monotonic() - checked[0] > 0.5:
                checked[0] = time.monotonic()
                return client().ping()
            return True

        run = PumpRun(sub, render=lambda events: str(client().dbsize()), alive=alive, idle=0.1)
        enqueue()
        wait_for(lambda: run.sent, timeout=5, what="a push while Redis is up")
        own.stop()
        stopped = time.monotonic()
        assert run.finish(timeout=10), f"still running after Redis went away: {sub.gets} gets"
    finally:
        if own.proc.poll() is None:
            own.stop()
    assert run.error is None, f"raised {run.error!r}"
    assert run.ended == "unavailable" and sub.gets <= 10 * (time.monotonic() - stopped) + 5
