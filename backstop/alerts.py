"""Alerts (SPEC section 5): rules, one evaluator across every worker, incidents that fire once
and resolve once.

Decisions:

- A rule has a kind, a queue ("*": each queue on its own), a threshold, a window, a cool-down,
  targets of its own (webhooks, mail) and an enabled flag. Rules live in Redis (rule id ->
  JSON). The first reader stores the defaults made from the ALERT_* settings, once: a marker
  remembers it, so a rule an owner deleted stays deleted.
- Every kind reads one number per queue, and its condition is ``value >= threshold``:

  failures        failed attempts (retried or dead) on the queue within the window. Read
                  from the per-minute metrics, so the window is whole minutes: the last
                  ceil(window / 60) minute buckets, the current one included (between N-1 and
                  N minutes of history). At most one hour.
  dlq_growth      dead letters from the queue whose last failure is within the window
                  (exact to the second: the DLQ's per-queue index is scored by last failure).
  oldest_waiting  age in seconds of the queue's oldest waiting job (the window is unused).
  no_workers      seconds the queue has had waiting jobs and no live worker consuming it:
                  since the later of its last consumer's last beat and its oldest waiting
                  job's arrival, as backstop.health counts it (the window is unused). A worker
                  that never started is caught as soon as a job has waited that long.
  unhealthy       1 while backstop.health.assess has critical findings on the queue that no
                  other enabled rule watches there (error rate: failures; oldest job:
                  oldest_waiting; no workers: no_workers), so one incident is one alert
                  (threshold 1; the alert's message carries those findings).

  A paused queue reads 0 for oldest_waiting and no_workers: its jobs wait, and no worker takes
  them, because someone chose so (health reports a long pause on its own).

- An incident is one (rule, queue). It fires once when the condition becomes true and the
  rule's cool-down since that pair last fired has passed; it stays firing, silently, while
  the condition holds; it resolves, with a second message, at the first evaluation that finds
  the condition false (or the rule disabled or deleted).
- Exactly one process evaluates at a time: a lease in Redis (SET NX PX, renewed by its holder
  at every evaluation; a holder that dies is replaced once its lease expires). Every
  transition is written by a script that first checks the lease, so a process that lost it
  mid-evaluation (a long pause) changes nothing and sends nothing.
- A transition that was written is published as an ``alert`` event (the live feed), added to
  the capped history, and delivered by backstop.notify directly from the evaluating process,
  never through a queue (the queue may be what is broken).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import health, keys, metrics, stats
from .config import settings
from .connection import client
from .contracts import EMAIL_PATTERN, QUEUES
from .dlq_maintenance import publish
from .errors import BackstopError

log = logging.getLogger("backstop.alerts")

KINDS = ("failures", "dlq_growth", "oldest_waiting", "no_workers", "unhealthy")
Kind = Literal["failures", "dlq_growth", "oldest_waiting", "no_workers", "unhealthy"]
RULE_ID = r"^[a-z0-9][a-z0-9_-]{0,39}$"
EMAIL = re.compile(EMAIL_PATTERN)
MAX_TARGETS = 10
MAX_FAILURE_WINDOW = 3600
HISTORY_LENGTH = 1000
LEASE_FLOOR_SECONDS = 5.0
EVALUATED_TTL = 86400
SEVERITY = {"fired": "error", "resolved": "info"}
# A rule kind -> the health finding it watches (an unhealthy rule leaves that one to it).
COVERED_BY = {"failures": "error_rate", "oldest_waiting": "oldest_waiting",
              "no_workers": "no_workers"}


class RuleError(BackstopError):
    """A rule failed validation, or names a rule that is not there. ``errors`` lists
    {field, message} per bad field; status is the HTTP status that fits."""

    def __init__(self, errors: list[dict], status: int = 422):
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(f"invalid alert rule: {text}")
        self.errors = errors
        self.status = status


class AlertRule(BaseModel):
    """One alert rule (see the module docstring for what each kind reads)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=RULE_ID)
    kind: Kind
    queue: str = "*"
    threshold: float = Field(gt=0, le=1_000_000_000)
    window_seconds: int = Field(default=300, ge=60, le=86400)
    cooldown_seconds: int = Field(default=900, ge=0, le=7 * 86400)
    webhooks: list[str] = Field(default_factory=list, max_length=MAX_TARGETS)
    mail_to: list[str] = Field(default_factory=list, max_length=MAX_TARGETS)
    enabled: bool = True

    @field_validator("queue")
    @classmethod
    def _known_queue(cls, value: str) -> str:
        if value != "*" and value not in QUEUES:
            raise ValueError(f"must be * (each queue) or one of {', '.join(QUEUES)}")
        return value

    @field_validator("threshold")
    @classmethod
    def _unhealthy_threshold(cls, value: float, info) -> float:
        if info.data.get("kind") == "unhealthy" and value != 1:
            raise ValueError("an unhealthy rule reads 1 while the queue is unhealthy: use 1")
        return value

    @field_validator("window_seconds")
    @classmethod
    def _failure_window(cls, value: int, info) -> int:
        if info.data.get("kind") == "failures" and value > MAX_FAILURE_WINDOW:
            raise ValueError(f"a failures rule counts at most {MAX_FAILURE_WINDOW} s (1 hour)")
        return value

    @field_validator("webhooks")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s]*)?", url) or len(url) > 2000:
                raise ValueError(f"{url[:80]!r} is not an http:// or https:// URL")
        return list(dict.fromkeys(value))

    @field_validator("mail_to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not EMAIL.fullmatch(address):
                raise ValueError(f"{address[:80]!r} is not an e-mail address")
        return list(dict.fromkeys(value))

    def queues(self) -> tuple[str, ...]:
        """The queues this rule watches."""
        return QUEUES if self.queue == "*" else (self.queue,)


def parse_rule(data: dict) -> AlertRule:
    """A validated rule from plain data. Raises RuleError naming each bad field."""
    try:
        return AlertRule.model_validate(data)
    except ValidationError as exc:
        raise RuleError([{"field": ".".join(str(p) for p in err["loc"]) or "(rule)",
                          "message": err["msg"].removeprefix("Value error, ")}
                         for err in exc.errors()]) from None


def default_rules() -> list[AlertRule]:
    """The rules a deployment starts with, from the ALERT_* and HEALTH_* settings."""
    s = settings()
    cooldown, window = s.int("alert_cooldown_seconds"), s.int("alert_failures_window")
    common = {"queue": "*", "cooldown_seconds": cooldown}
    return [parse_rule({**common, **rule}) for rule in (
        {"id": "failures", "kind": "failures", "threshold": s.float("alert_failures"),
         "window_seconds": min(window, MAX_FAILURE_WINDOW)},
        {"id": "dlq-growth", "kind": "dlq_growth", "threshold": s.float("alert_dlq_growth"),
         "window_seconds": window},
        {"id": "oldest-waiting", "kind": "oldest_waiting",
         "threshold": s.float("alert_oldest_waiting_seconds")},
        {"id": "no-workers", "kind": "no_workers",
         "threshold": s.float("health_no_worker_seconds")},
        {"id": "unhealthy", "kind": "unhealthy", "threshold": 1},
    )]


# ---- rules in Redis ----
def rules(r: redis.Redis | None = None) -> list[AlertRule]:
    """Every stored rule, by id; the defaults are stored first if none ever were."""
    r = r or client()
    if not r.exists(keys.alert_rules_seeded()) and r.set(keys.alert_rules_seeded(), "1", nx=True):
        pipe = r.pipeline()
        for rule in default_rules():
            pipe.hsetnx(keys.alert_rules(), rule.id, rule.model_dump_json())
        pipe.execute()
    stored = r.hgetall(keys.alert_rules())
    out = []
    for rule_id, raw in sorted(stored.items()):
        try:
            out.append(AlertRule.model_validate_json(raw))
        except ValidationError:
            log.error("alert rule %s in Redis is not valid; it is ignored", rule_id)
    return out


def get_rule(rule_id: str) -> AlertRule | None:
    """One rule, or None."""
    return next((rule for rule in rules() if rule.id == rule_id), None)


def create_rule(data: dict) -> AlertRule:
    """Store a new rule. Raises RuleError if it is invalid or its id is taken."""
    rule = parse_rule(data)
    rules()  # the defaults first, so a new rule cannot take a default's id unnoticed
    if not client().hsetnx(keys.alert_rules(), rule.id, rule.model_dump_json()):
        raise RuleError([{"field": "id", "message": f"a rule {rule.id!r} exists already"}])
    return rule


def update_rule(rule_id: str, changes: dict) -> AlertRule:
    """Change a stored rule (id and kind stay). Raises RuleError if it is not there (404) or
    the result is invalid."""
    current = get_rule(rule_id)
    if current is None:
        raise RuleError([{"field": "id", "message": f"there is no rule {rule_id!r}"}], 404)
    fixed = {"id": current.id, "kind": current.kind}
    rule = parse_rule({**current.model_dump(), **changes, **fixed})
    client().hset(keys.alert_rules(), rule.id, rule.model_dump_json())
    return rule


def delete_rule(rule_id: str) -> bool:
    """Delete a rule; its firing incidents resolve at the next evaluation. True if it was."""
    rules()
    return bool(client().hdel(keys.alert_rules(), rule_id))


# ---- the evaluator's lease ----
# KEYS: lease. ARGV: worker, ms. 1: renewed, 2: taken, 0: another process holds it.
LEASE = r"""
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

# KEYS: lease, firing, fired-at, history. ARGV: worker, field, action (fire, resolve, update),
# incident JSON, now, history length, history entry JSON.
# Returns the history entry's id (fire, resolve), 1 (update), or 0: not this process's to
# write (the lease is another's) or nothing to do (already firing, already resolved).
TRANSITION = r"""
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
local action = ARGV[3]
if action == 'update' then
  if redis.call('hexists', KEYS[2], ARGV[2]) == 0 then return 0 end
  redis.call('hset', KEYS[2], ARGV[2], ARGV[4])
  return 1
elseif action == 'fire' then
  if redis.call('hsetnx', KEYS[2], ARGV[2], ARGV[4]) == 0 then return 0 end
  redis.call('hset', KEYS[3], ARGV[2], ARGV[5])
elseif redis.call('hdel', KEYS[2], ARGV[2]) == 0 then
  return 0
end
return redis.call('xadd', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'a', ARGV[7])
"""


@lru_cache(maxsize=8)
def _scripts(r: redis.Redis) -> dict:
    return {"lease": r.register_script(LEASE), "transition": r.register_script(TRANSITION)}


def lease_ms() -> int:
    """How long the evaluator's lease lasts: three evaluations, at least 5 s."""
    return int(max(3 * settings().float("alert_evaluate_seconds"), LEASE_FLOOR_SECONDS) * 1000)


def hold_lease(worker_id: str) -> bool:
    """Take or renew the evaluator's lease; True if this process holds it now."""
    return bool(_scripts(client())["lease"](keys=[keys.alert_lease()],
                                            args=[worker_id, lease_ms()]))


# ---- readings ----
def window_minutes(rule: AlertRule) -> int:
    """The minute buckets a failures rule counts: its window rounded up to whole minutes."""
    return max(1, math.ceil(rule.window_seconds / 60))


def read_values(active: list[AlertRule], now: float,
                live: bool) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], str]]:
    """Each (rule id, queue)'s reading; and, for queues an unhealthy rule fires on, what
    health found (the alert's message says it). live: the readings are of now (cached stats
    may be reused), not of an explicit moment."""
    sources = _sources(active, now, live)
    pairs = [(rule, queue) for rule in active for queue in rule.queues()]
    values = {(rule.id, queue): tidy(_value(rule, queue, sources)) for rule, queue in pairs}
    notes = {(rule.id, queue): "; ".join(i["message"] for i in sources["uncovered"][queue])
             for rule, queue in pairs if rule.kind == "unhealthy" and values[(rule.id, queue)]}
    return values, notes


def _sources(active: list[AlertRule], now: float, live: bool) -> dict:
    """What the rules read: metrics, DLQ counts and consumers' last beats in one pipelined
    round trip; the stats monitor and the health assessment only when a rule needs them."""
    windows = sorted({window_minutes(rule) for rule in active if rule.kind == "failures"})
    growth = [(rule, q) for rule in active if rule.kind == "dlq_growth" for q in rule.queues()]
    readers: list[Callable[[Any], metrics.Finish]] = [
        partial(metrics.recent, queues=QUEUES, minutes=m, now=now) for m in windows]
    readers += [partial(_dlq_reads, pairs=growth, now=now), _consumers_read]
    *recent, dlq_counts, consumers = metrics.read(client(), *readers)
    sources = {"failures": dict(zip(windows, recent, strict=True)), "dlq": dlq_counts,
               "consumers": consumers, "now": now, "monitor": {}, "uncovered": {}}
    kinds = {rule.kind for rule in active}
    if kinds & {"oldest_waiting", "no_workers"}:
        sources["monitor"] = stats.monitor(None if live else now)["queues"]
    if "unhealthy" in kinds:
        assessed = health.assess(None if live else now)["queues"]
        sources["uncovered"] = _uncovered(active, assessed)
    return sources


def _uncovered(active: list[AlertRule], assessed: dict) -> dict[str, list[dict]]:
    """Per queue, health's critical findings that no other enabled rule watches on it: one
    incident is one alert, so a failing queue's error rate does not alert twice (as failures
    and as unhealthy)."""
    watched = {(COVERED_BY[rule.kind], queue) for rule in active if rule.kind in COVERED_BY
               for queue in rule.queues()}
    return {queue: [i for i in row["issues"] if i["severity"] == "critical"
                    and (i["code"], queue) not in watched] for queue, row in assessed.items()}


def tidy(value: float) -> float:
    """A reading as it is stored and shown: whole numbers as int, others to 0.1."""
    return int(value) if float(value).is_integer() else round(value, 1)


def _dlq_reads(pipe, pairs: list[tuple[AlertRule, str]], now: float):
    for rule, queue in pairs:
        pipe.zcount(keys.dlq_dim_index("queue", queue), f"({now - rule.window_seconds}", "+inf")

    def finish(results: list) -> dict:
        return {(rule.id, queue): int(n) for (rule, queue), n in zip(pairs, results, strict=True)}

    return finish


def _consumers_read(pipe):
    pipe.hgetall(keys.queue_consumers())
    return lambda results: {q: float(t) for q, t in results[0].items()}


def _value(rule: AlertRule, queue: str, sources: dict) -> float:
    if rule.kind == "failures":
        return float(sources["failures"][window_minutes(rule)][queue]["all"].failed)
    if rule.kind == "dlq_growth":
        return float(sources["dlq"][(rule.id, queue)])
    if rule.kind == "unhealthy":
        return float(bool(sources["uncovered"].get(queue)))
    row = sources["monitor"][queue]
    if row["paused"]:
        return 0.0  # its jobs wait, and no worker takes them, because someone chose so
    if rule.kind == "oldest_waiting":
        return float(round(row["oldest_waiting_age"] or 0))
    return _without_workers(row, sources["consumers"].get(queue), sources["now"])


def _without_workers(row: dict, last_seen: float | None, now: float) -> float:
    """Seconds a queue has had waiting jobs and no live consumer: since the later of its last
    consumer's last beat and its oldest waiting job's arrival (as backstop.health counts)."""
    if row["workers"] or not row["counts"]["waiting"]:
        return 0.0
    since = max(last_seen or 0.0, now - (row["oldest_waiting_age"] or 0.0))
    return float(round(max(0.0, now - since)))


# ---- evaluation ----
def _field(rule_id: str, queue: str) -> str:
    return f"{rule_id}|{queue}"


def _state(r: redis.Redis) -> tuple[dict, dict]:
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(keys.alert_firing())
    pipe.hgetall(keys.alert_fired_at())
    firing, fired_at = pipe.execute()
    return ({k: json.loads(v) for k, v in firing.items()},
            {k: float(v) for k, v in fired_at.items()})


def evaluate(worker_id: str, now: float | None = None) -> list[dict] | None:
    """Evaluate every enabled rule once, if this process holds (or can take) the evaluator's
    lease; None otherwise. Returns the transitions written ({action, field, entry}); each
    fired or resolved one is published and delivered.

    worker_id: the evaluating process (the lease holder). now: evaluate as of this moment
    (tests; stats are then read uncached).
    """
    live = now is None
    now = time.time() if now is None else now
    r = client()
    if not hold_lease(worker_id):
        return None
    active = [rule for rule in rules(r) if rule.enabled]
    values, notes = read_values(active, now, live)
    firing, fired_at = _state(r)
    by_id = {rule.id: rule for rule in active}
    plan, held_back = _plan(by_id, values, notes, firing, fired_at, now)
    done = [step for step in plan if _commit(r, worker_id, step, now)]
    _note(r, worker_id, now, values, held_back)
    for step in done:
        if step["action"] != "update":
            announce(step["entry"], by_id.get(step["entry"]["rule"]) or get_rule_quiet(
                step["entry"]["rule"]))
    return done


def get_rule_quiet(rule_id: str) -> AlertRule | None:
    """A rule even when disabled (its targets still get the "resolved"), or None."""
    try:
        return get_rule(rule_id)
    except redis.RedisError:
        return None


def _plan(by_id: dict, values: dict, notes: dict, firing: dict, fired_at: dict,
          now: float) -> tuple[list[dict], list[str]]:
    """The transitions to write, and the pairs whose firing the cool-down holds back."""
    plan, held_back = [], []
    for (rule_id, queue), value in values.items():
        rule, field = by_id[rule_id], _field(rule_id, queue)
        incident = firing.get(field)
        if value >= rule.threshold:
            if incident is not None:
                if value != incident["value"]:
                    plan.append(_update(field, incident, value))
            elif now - fired_at.get(field, -math.inf) < rule.cooldown_seconds:
                held_back.append(field)
            else:
                plan.append(_fire(field, rule, queue, value, now, notes.get((rule_id, queue))))
        elif incident is not None:
            plan.append(_resolve(field, incident, value, now, ""))
    for field, incident in firing.items():
        rule_id, queue = field.split("|", 1)
        if (rule_id, queue) not in values:
            why = ("its rule was disabled or deleted" if rule_id not in by_id
                   else "its rule no longer watches this queue")
            plan.append(_resolve(field, incident, None, now, why))
    return plan, held_back


def _fire(field: str, rule: AlertRule, queue: str, value: float, now: float,
          note: str | None = None) -> dict:
    entry = {"id": uuid.uuid4().hex[:12], "event": "fired", "rule": rule.id, "kind": rule.kind,
             "queue": queue, "value": value, "peak": value, "threshold": tidy(rule.threshold),
             "window_seconds": rule.window_seconds, "started_at": now, "resolved_at": None,
             "note": note}
    entry["message"] = describe(entry)
    return {"action": "fire", "field": field, "entry": entry, "incident": entry}


def _update(field: str, incident: dict, value: float) -> dict:
    current = {**incident, "value": value, "peak": max(value, incident.get("peak", value))}
    return {"action": "update", "field": field, "entry": current, "incident": current}


def _resolve(field: str, incident: dict, value: float | None, now: float, why: str) -> dict:
    entry = {**incident, "event": "resolved", "value": value, "resolved_at": now}
    entry["message"] = describe(entry, why)
    return {"action": "resolve", "field": field, "entry": entry, "incident": incident}


def _commit(r: redis.Redis, worker_id: str, step: dict, now: float) -> bool:
    written = _scripts(r)["transition"](
        keys=[keys.alert_lease(), keys.alert_firing(), keys.alert_fired_at(),
              keys.alert_history()],
        args=[worker_id, step["field"], step["action"], json.dumps(step["incident"]), now,
              HISTORY_LENGTH, json.dumps(step["entry"])])
    if written and step["action"] != "update":
        step["entry"]["history_id"] = written
    return bool(written)


def _note(r: redis.Redis, worker_id: str, now: float, values: dict, held_back: list) -> None:
    note = {"t": now, "worker": worker_id, "held_back": held_back,
            "values": {_field(*pair): value for pair, value in values.items()}}
    r.set(keys.alert_evaluated(), json.dumps(note), ex=EVALUATED_TTL)


# ---- messages, events, delivery ----
def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def describe(entry: dict, why: str = "") -> str:
    """The one-line message of an alert that fired or resolved (English: it goes to webhooks,
    mail and logs; the panel words its own)."""
    q, v, t = entry["queue"], _number(entry["value"]), _number(entry["threshold"])
    minutes = max(1, math.ceil(entry["window_seconds"] / 60))
    what = {
        "failures": f"{v} failed attempts on queue {q} in the last {minutes} min "
                    f"(threshold {t})",
        "dlq_growth": f"{v} new dead letters from queue {q} in the last "
                      f"{entry['window_seconds']} s (threshold {t})",
        "oldest_waiting": f"the oldest waiting job on queue {q} has waited {v} s "
                          f"(threshold {t} s)",
        "no_workers": f"queue {q} has had waiting jobs and no live worker for {v} s "
                      f"(threshold {t} s)",
        "unhealthy": f"queue {q} is unhealthy" + (f": {entry['note']}" if entry.get("note")
                                                   else ""),
    }[entry["kind"]]
    if entry["event"] == "fired":
        return f"{entry['rule']}: {what}"
    lasted = _number(round(entry["resolved_at"] - entry["started_at"]))
    cause = why or f"back under the threshold ({v} now)"
    return f"resolved {entry['rule']} on queue {q}: {cause}; it fired {lasted} s ago"


def announce(entry: dict, rule: AlertRule | None) -> None:
    """Publish a fired or resolved alert on the live feed and deliver it to its targets."""
    from . import notify

    try:
        publish("alert", severity=SEVERITY[entry["event"]], source="alerts",
                event=entry["event"], alert_id=entry["id"], rule=entry["rule"],
                queue=entry["queue"], value=entry["value"], threshold=entry["threshold"],
                message=entry["message"])
    except redis.RedisError as exc:
        log.warning("alert %s %s not published on the live feed: %s", entry["id"],
                    entry["event"], exc)
    notify.deliver(entry, rule)


# ---- what the panel shows ----
def firing() -> list[dict]:
    """Incidents firing now, newest first."""
    raw = client().hgetall(keys.alert_firing())
    return sorted((json.loads(v) for v in raw.values()), key=lambda i: -i["started_at"])


def history(count: int = 50) -> list[dict]:
    """Alerts fired and resolved, newest first."""
    return _entries(client().xrevrange(keys.alert_history(), count=count))


def _entries(raw: Any) -> list[dict]:
    """History stream entries as alerts, each with its "history_id"."""
    return [{**json.loads(fields["a"]), "history_id": xid} for xid, fields in raw or []]


def deliveries(count: int = 50) -> list[dict]:
    """The newest delivery attempts, newest first."""
    return [json.loads(item) for item in client().lrange(keys.alert_deliveries(), 0, count - 1)]


def last_evaluation() -> dict | None:
    """When the rules were last evaluated, by which worker, with each reading; None if never
    (or not within a day)."""
    raw = client().get(keys.alert_evaluated())
    return json.loads(raw) if raw else None


HISTORY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def badge(after: str | None = None) -> dict:
    """The panel's alert count and toasts: how many incidents fire, the newest history id,
    and (after: a history id the page has seen) up to 5 alerts fired or resolved since."""
    pipe = client().pipeline(transaction=False)
    pipe.hlen(keys.alert_firing())
    pipe.xrevrange(keys.alert_history(), count=1)
    seen = after if after and HISTORY_ID.fullmatch(after) else None
    if seen:
        pipe.xrange(keys.alert_history(), min=f"({seen}", count=5)
    count, newest, *since = pipe.execute()
    return {"firing": count, "latest": newest[0][0] if newest else (seen or "0-0"),
            "new": _entries(since[0] if since else [])}


def stale_after() -> float:
    """Seconds without an evaluation after which the panel says nobody evaluates."""
    return max(3 * settings().float("alert_evaluate_seconds"), 30.0)


def panel_data(now: float | None = None) -> dict:
    """Everything the Alerts page shows: firing incidents, history, delivery attempts, the
    last evaluation (and whether it is too old), the rules and the default targets."""
    from .notify import mail_targets, shown_url, webhook_targets

    now = time.time() if now is None else now
    evaluated = last_evaluation()
    stale = evaluated is None or now - evaluated["t"] > stale_after()
    listed = [{**rule.model_dump(), "webhooks_shown": [shown_url(u) for u in rule.webhooks]}
              for rule in rules()]
    return {"firing": firing(), "history": history(50), "deliveries": deliveries(50),
            "evaluated": evaluated, "evaluation_stale": stale, "rules": listed,
            "default_webhooks": [shown_url(u) for u in webhook_targets(None)],
            "default_mail": mail_targets(None), "kinds": KINDS, "queues": QUEUES,
            "now": now}
