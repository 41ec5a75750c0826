"""Throttled redrive: replay everything a filter selects at a set rate, in the background
(SPEC section 4), so replaying 100,000 jobs does not stampede the service behind them.

start() snapshots the matching record ids into a pending list and creates the redrive's state.
Every worker process calls drive() about twenty times a second; for each live redrive one of them
holds a short lease and replays as many records as the rate allows. An id moves from the
pending list to an in-flight list before its replay and leaves it in the same script that
counts its outcome, so the counters are exact. A driver that dies leaves ids in flight; the
next lease holder looks in each record's lineage for this redrive's attempt and counts it, or
puts the id back to be replayed: nothing is replayed or counted twice.

Redis layout (keys.py): redrive:<id> (state hash), redrive:<id>:pending and :inflight (lists),
redrive:<id>:lease (driver id, PX), redrive-slot:<queue> (the active redrive of a queue, "*"
for all), redrives (zset of recent redrives) and redrives:live (set of redrives to drive).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from functools import lru_cache

import redis

from . import dlq, keys, replay
from .connection import client
from .contracts import QUEUES
from .dlq import DlqError, FilterError, Filters
from .dlq_maintenance import publish
from .errors import PayloadError, UnknownJob
from .scanning import chunks

log = logging.getLogger("backstop.redrive")

MIN_RATE, MAX_RATE = 0.1, 1000.0
BURST_SECONDS = 1.0  # tokens saved up while a tick ran late; never more than 1 s of rate
LEASE_MS = 3000
CHECK_SECONDS = 0.25  # how often a driver renews its lease and rereads the status mid-tick
MAX_PER_TICK = 500
SNAPSHOT_CHUNK = 1000
CLAIM_SECONDS = 600  # a start that dies while snapshotting frees its queue's slot by then
KEEP_SECONDS = 7 * 86400
INDEX_SIZE = 200
LIVE = ("running", "paused")
TIMES = ("created_at", "started_at", "updated_at", "paused_at", "resumed_at", "cancelled_at",
         "finished_at")

# KEYS: lease, state. ARGV: worker, ms, now.
# 1: renewed, 2: taken over, 0: someone else's, -1: the redrive's state is gone.
LEASE = r"""
if redis.call('exists', KEYS[2]) == 0 then return -1 end
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('hset', KEYS[2], 'driver', ARGV[1])
redis.call('hsetnx', KEYS[2], 'started_at', ARGV[3])
redis.call('hincrby', KEYS[2], 'leases', 1)
return 2
"""

# KEYS: state, pending, inflight. ARGV: n, tokens, now, sent log (JSON), log entry time.
# Moves up to n ids into flight and spends their tokens, only while the redrive runs.
TAKE = r"""
if redis.call('hget', KEYS[1], 'status') ~= 'running' then return {} end
local ids = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('lmove', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
  if not id then break end
  ids[#ids + 1] = id
end
local sent = cjson.decode(ARGV[4])
if #ids > 0 then sent[#sent + 1] = {tonumber(ARGV[5]), #ids} end
redis.call('hset', KEYS[1], 'tokens', tonumber(ARGV[2]) - #ids, 'tokens_at', ARGV[3],
  'sent_log', #sent > 0 and cjson.encode(sent) or '[]')
return ids
"""

# KEYS: inflight, state. ARGV: record id, now, counters... Counts an outcome once: only if the
# id was still in flight.
SETTLE = r"""
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
for i = 3, #ARGV do redis.call('hincrby', KEYS[2], ARGV[i], 1) end
redis.call('hset', KEYS[2], 'updated_at', ARGV[2])
return 1
"""

# KEYS: inflight, pending. ARGV: 'head' or 'tail', ids... Returns ids in flight to pending.
PUT_BACK = r"""
local n = 0
for i = #ARGV, 2, -1 do
  if redis.call('lrem', KEYS[1], 1, ARGV[i]) == 1 then
    if ARGV[1] == 'head' then redis.call('lpush', KEYS[2], ARGV[i])
    else redis.call('rpush', KEYS[2], ARGV[i]) end
    n = n + 1
  end
end
return n
"""

# KEYS: state, slot, live, pending, inflight. ARGV: id, allowed statuses (",a,b,"), new status,
# now, actor, verb, keep seconds. A cancel with nothing in flight also cleans up at once.
TRANSITION = r"""
local current = redis.call('hget', KEYS[1], 'status')
if not current then return {'missing', ''} end
if not string.find(ARGV[2], ',' .. current .. ',', 1, true) then return {'state', current} end
local now = ARGV[4]
redis.call('hset', KEYS[1], 'status', ARGV[3], 'updated_at', now, ARGV[6] .. '_at', now,
  ARGV[6] .. '_by', ARGV[5])
if ARGV[3] == 'running' then redis.call('hset', KEYS[1], 'tokens', 1, 'tokens_at', now) end
if ARGV[3] == 'cancelled' then
  redis.call('hset', KEYS[1], 'finished_at', now)
  if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
  if redis.call('llen', KEYS[5]) == 0 then
    redis.call('del', KEYS[4])
    redis.call('srem', KEYS[3], ARGV[1])
    redis.call('expire', KEYS[1], ARGV[7])
  end
end
return {'ok', current}
"""

# KEYS: state, pending, inflight, lease, live, slot. ARGV: id, worker, now, keep seconds.
# Marks a running redrive with nothing left done, and cleans up after a done or cancelled one.
FINISH = r"""
local status = redis.call('hget', KEYS[1], 'status')
if not status then redis.call('srem', KEYS[5], ARGV[1]) return 'missing' end
if redis.call('llen', KEYS[3]) > 0 then return 'busy' end
if status == 'running' then
  if redis.call('llen', KEYS[2]) > 0 then return 'busy' end
  redis.call('hset', KEYS[1], 'status', 'done', 'finished_at', ARGV[3], 'updated_at', ARGV[3])
  if redis.call('get', KEYS[6]) == ARGV[1] then redis.call('del', KEYS[6]) end
elseif status ~= 'cancelled' then return status end
redis.call('del', KEYS[2], KEYS[3])
if redis.call('get', KEYS[4]) == ARGV[2] then redis.call('del', KEYS[4]) end
redis.call('srem', KEYS[5], ARGV[1])
redis.call('expire', KEYS[1], ARGV[4])
return status == 'running' and 'done' or status
"""

# KEYS: slot. ARGV: redrive id, seconds. Nil if claimed, else the id holding it (SET NX GET
# needs Redis 7; Backstop supports 6.2).
CLAIM = r"""
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
return redis.call('get', KEYS[1])
"""

# KEYS: key. ARGV: value. Deletes the key only if it still holds the value.
RELEASE = r"""
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

SOURCES = {"lease": LEASE, "take": TAKE, "settle": SETTLE, "put_back": PUT_BACK,
           "transition": TRANSITION, "finish": FINISH, "claim": CLAIM, "release": RELEASE}


@lru_cache(maxsize=8)
def _registered(r: redis.Redis) -> dict:
    return {name: r.register_script(source) for name, source in SOURCES.items()}


def _script(name: str):
    return _registered(client())[name]


def _actor(redrive_id: str) -> str:
    """The actor a redrive's replays carry in each record's lineage."""
    return f"redrive:{redrive_id}"


def _missing(redrive_id: str) -> DlqError:
    return DlqError(f"no redrive {redrive_id!r}", code="missing", status=404)


# ---- starting ----
def start(actor: str, flt: Filters, rate: float | None, queue: str | None = None) -> dict:
    """Start replaying every record the filter selects at ``rate`` jobs/s, in the background.

    actor: who started it (kept, and in every event). queue: replay into this queue; None
    replays each record into its original queue. The matching ids are snapshotted now.
    One redrive is active (running or paused) per queue: ``queue``, else the filter's queue,
    else "*" (all queues).
    Returns the redrive's progress (see progress()). Raises FilterError (rate or queue out of
    range), DlqError code "running" (a redrive for the same queue is active; ``redrive_id``
    names it) or code "empty" (nothing matches the filter).
    """
    rate, queue = _checked(rate, queue)
    scope = queue or flt.queue or "*"
    redrive_id = uuid.uuid4().hex[:16]
    _claim(scope, redrive_id)
    try:
        total = _snapshot(redrive_id, flt)
        if not total:
            raise DlqError("no dead-letter records match the filter; nothing to redrive",
                           code="empty")
        _create(redrive_id, actor, flt, rate, queue, scope, total)
    except BaseException:
        _script("release")(keys=[keys.redrive_slot(scope)], args=[redrive_id])
        client().delete(keys.redrive_pending(redrive_id))
        raise
    publish("redrive.started", source="dlq", redrive=redrive_id, actor=actor, total=total,
            rate=rate, queue=queue, scope=scope, filter=flt.as_dict())
    return progress(redrive_id)


def _checked(rate, queue: str | None) -> tuple[float, str | None]:
    errors = []
    try:
        value = float(rate)
    except (TypeError, ValueError):
        value = math.nan
    if not MIN_RATE <= value <= MAX_RATE:  # also refuses NaN
        errors.append({"field": "rate", "message": f"jobs per second from {MIN_RATE:g} to "
                                                   f"{MAX_RATE:g}; got {rate!r}"})
    if queue and queue not in QUEUES:
        errors.append({"field": "queue", "message": f"unknown queue {queue!r}; queues are "
                                                    f"{', '.join(QUEUES)}"})
    if errors:
        raise FilterError(errors)
    return value, queue or None


def _claim(scope: str, redrive_id: str) -> None:
    other = _script("claim")(keys=[keys.redrive_slot(scope)], args=[redrive_id, CLAIM_SECONDS])
    if other is not None:
        where = "all queues" if scope == "*" else f"queue {scope!r}"
        error = DlqError(f"redrive {other} is already active for {where}; cancel it or wait "
                         "for it to finish", code="running")
        error.redrive_id = other
        raise error


def _snapshot(redrive_id: str, flt: Filters) -> int:
    """RPUSH the matching ids to the pending list (expiring until the redrive exists)."""
    pending, total = keys.redrive_pending(redrive_id), 0
    pipe = client().pipeline(transaction=False)
    for n, batch in enumerate(chunks(dlq.iter_ids(flt, chunk=SNAPSHOT_CHUNK), SNAPSHOT_CHUNK)):
        pipe.rpush(pending, *batch)
        total += len(batch)
        if n % 10 == 9:
            pipe.expire(pending, CLAIM_SECONDS).execute()
    pipe.expire(pending, CLAIM_SECONDS).execute()
    return total


def _create(redrive_id: str, actor: str, flt: Filters, rate: float, queue: str | None,
            scope: str, total: int) -> None:
    now = time.time()
    state = {"id": redrive_id, "actor": actor, "filter": json.dumps(flt.as_dict()),
             "rate": rate, "queue": queue or "", "scope": scope, "status": "running",
             "total": total, "replayed": 0, "refused": 0, "errors": 0, "created_at": now,
             "updated_at": now, "tokens": 1, "tokens_at": now, "sent_log": "[]"}
    pipe = client().pipeline()
    pipe.hset(keys.redrive(redrive_id), mapping=state)
    pipe.persist(keys.redrive_pending(redrive_id))
    pipe.persist(keys.redrive_slot(scope))
    pipe.zadd(keys.redrives(), {redrive_id: now})
    pipe.zremrangebyrank(keys.redrives(), 0, -INDEX_SIZE - 1)
    pipe.sadd(keys.redrives_live(), redrive_id)
    pipe.execute()


# ---- pause, resume, cancel ----
def pause(redrive_id: str, actor: str) -> dict:
    """Stop a running redrive taking more records (one already replaying finishes).

    Returns its progress. Raises DlqError: missing (404) or state (409, not running).
    """
    return _transition(redrive_id, actor, ("running",), "paused", "paused")


def resume(redrive_id: str, actor: str) -> dict:
    """Let a paused redrive go on, at its rate from now (no burst for the time paused).

    Returns its progress. Raises DlqError: missing (404) or state (409, not paused).
    """
    return _transition(redrive_id, actor, ("paused",), "running", "resumed")


def cancel(redrive_id: str, actor: str) -> dict:
    """End a running or paused redrive for good and free its queue for another.

    Records not replayed yet stay in the DLQ untouched. Returns its progress.
    Raises DlqError: missing (404) or state (409, already done or cancelled).
    """
    return _transition(redrive_id, actor, LIVE, "cancelled", "cancelled")


def _transition(redrive_id: str, actor: str, allowed: tuple[str, ...], status: str,
                verb: str) -> dict:
    scope = client().hget(keys.redrive(redrive_id), "scope")
    if scope is None:
        raise _missing(redrive_id)
    outcome, current = _script("transition")(
        keys=[keys.redrive(redrive_id), keys.redrive_slot(scope), keys.redrives_live(),
              keys.redrive_pending(redrive_id), keys.redrive_inflight(redrive_id)],
        args=[redrive_id, f",{','.join(allowed)},", status, time.time(), actor, verb,
              KEEP_SECONDS])
    if outcome == "missing":
        raise _missing(redrive_id)
    if outcome == "state":
        raise DlqError(f"redrive {redrive_id} is {current}; only a {' or '.join(allowed)} "
                       f"redrive can be {verb}", code="state")
    publish(f"redrive.{verb}", source="dlq", redrive=redrive_id, actor=actor)
    return progress(redrive_id)


# ---- reading ----
def progress(redrive_id: str) -> dict:
    """A redrive's state: status, total, replayed, refused (and by code), errors, remaining,
    rate, percent, eta_seconds (at the set rate, while running) and timestamps.

    Raises DlqError (missing, 404).
    """
    pipe = client().pipeline(transaction=False)
    _read(pipe, redrive_id)
    raw, pending, inflight = pipe.execute()
    if not raw:
        raise _missing(redrive_id)
    return _view(raw, pending + inflight)


def listing(limit: int = 20) -> list[dict]:
    """The most recent redrives (up to ``limit``), newest first, each as progress() has it."""
    ids = client().zrevrange(keys.redrives(), 0, max(1, limit) - 1)
    pipe = client().pipeline(transaction=False)
    for redrive_id in ids:
        _read(pipe, redrive_id)
    replies = pipe.execute()
    found = zip(ids, replies[0::3], replies[1::3], replies[2::3], strict=True)
    views = [_view(raw, pending + inflight) for _, raw, pending, inflight in found if raw]
    expired = [redrive_id for redrive_id, raw in zip(ids, replies[0::3], strict=True) if not raw]
    if expired:
        client().zrem(keys.redrives(), *expired)
    return views


def _read(pipe, redrive_id: str) -> None:
    pipe.hgetall(keys.redrive(redrive_id))
    pipe.llen(keys.redrive_pending(redrive_id))
    pipe.llen(keys.redrive_inflight(redrive_id))


def _view(raw: dict, queued: int) -> dict:
    """The state hash as plain data, with what is left and how long it should take."""
    counts = {name: int(raw.get(name) or 0) for name in ("total", "replayed", "refused",
                                                         "errors", "leases")}
    settled = counts["replayed"] + counts["refused"] + counts["errors"]
    status, rate = raw["status"], float(raw["rate"])
    remaining = queued if status in LIVE else counts["total"] - settled
    return {
        "id": raw["id"], "actor": raw["actor"], "filter": json.loads(raw["filter"]),
        "queue": raw["queue"] or None, "scope": raw["scope"], "status": status, "rate": rate,
        **counts, "remaining": remaining,
        "refused_by": {k.split(":", 1)[1]: int(v) for k, v in raw.items()
                       if k.startswith("refused:")},
        "last_error": raw.get("last_error", ""), "driver": raw.get("driver", ""),
        "percent": round(100.0 * settled / counts["total"], 1) if counts["total"] else 100.0,
        "eta_seconds": round(remaining / rate, 1) if status == "running" else None,
        **{name: float(raw[name]) if raw.get(name) else None for name in TIMES},
    }


# ---- driving ----
def drive(worker_id: str) -> int:
    """One tick of every live redrive whose lease this process holds or can take.

    Every worker process calls it about five times a second. worker_id: the lease holder's
    name. Returns how many records this call replayed. Raises redis.RedisError.
    """
    replayed = 0
    for redrive_id in client().smembers(keys.redrives_live()):
        try:
            replayed += _tick(redrive_id, worker_id)
        except redis.RedisError:
            raise
        except Exception:  # one broken redrive must not stop the others or the worker's loop
            log.exception("redrive %s: tick failed", redrive_id)
    return replayed


def _lease(redrive_id: str, worker_id: str, target=None) -> int:
    return _script("lease")(keys=[keys.redrive_lease(redrive_id), keys.redrive(redrive_id)],
                            args=[worker_id, LEASE_MS, time.time()], client=target)


def _tick(redrive_id: str, worker_id: str) -> int:
    """One step of one redrive: settle what a dead driver left, then replay what the rate
    allows, if this process holds the lease."""
    held = _lease(redrive_id, worker_id)
    if held < 0:
        client().srem(keys.redrives_live(), redrive_id)
    if held <= 0:
        return 0
    raw = client().hgetall(keys.redrive(redrive_id))
    _resolve_leftovers(redrive_id)
    if raw.get("status") == "cancelled":
        _finish(redrive_id, worker_id)
    return _step(redrive_id, worker_id, raw) if raw.get("status") == "running" else 0


def _step(redrive_id: str, worker_id: str, raw: dict) -> int:
    now = time.time()
    want, tokens, sent = _allowance(raw, now)
    if not want:
        return 0
    ids = _script("take")(
        keys=[keys.redrive(redrive_id), keys.redrive_pending(redrive_id),
              keys.redrive_inflight(redrive_id)],
        args=[want, tokens, now, json.dumps(sent), now + LEASE_MS / 1000])
    if not ids:
        _finish(redrive_id, worker_id)
        return 0
    replayed, holding = _replay_batch(redrive_id, worker_id, raw["queue"] or None, ids)
    if holding:
        # The log entry written at take time assumed the replays might last the whole lease;
        # now that they are over, it records when the last one went out.
        client().hset(keys.redrive(redrive_id), "sent_log",
                      json.dumps([*sent, [time.time(), len(ids)]]))
    return replayed


def _allowance(raw: dict, now: float) -> tuple[int, float, list]:
    """How many records may go now: the token bucket (at most BURST_SECONDS of rate saved up),
    capped so that no window of ceil(rate)/rate seconds (1 s from a rate of 1) ever holds more
    than ceil(rate) replays. Returns (count, tokens, log of recent takes)."""
    rate = float(raw["rate"])
    capacity = max(1.0, rate * BURST_SECONDS)
    tokens = min(capacity, float(raw["tokens"]) + rate * max(0.0, now - float(raw["tokens_at"])))
    per_window = math.ceil(rate)
    window = per_window / rate
    sent = [e for e in json.loads(raw.get("sent_log") or "[]") or [] if e[0] > now - window]
    room = per_window - sum(n for _, n in sent)
    return max(0, min(int(tokens), room, MAX_PER_TICK)), tokens, sent


def _replay_batch(redrive_id: str, worker_id: str, target: str | None,
                  ids: list[str]) -> tuple[int, bool]:
    """Replay ids taken this tick; stop early if paused, cancelled or the lease is lost.

    Returns (replayed, whether this process still holds the lease).
    """
    replayed, checked = 0, time.monotonic()
    for i, record_id in enumerate(ids):
        if time.monotonic() - checked >= CHECK_SECONDS:
            holding, running = _check_in(redrive_id, worker_id)
            if not (holding and running):
                if holding:
                    _put_back(redrive_id, ids[i:], "head")
                return replayed, holding
            checked = time.monotonic()
        replayed += _replay_one(redrive_id, record_id, target)
    return replayed, True


def _check_in(redrive_id: str, worker_id: str) -> tuple[bool, bool]:
    """Renew the lease and reread the status in one round trip."""
    pipe = client().pipeline(transaction=False)
    _lease(redrive_id, worker_id, target=pipe)
    pipe.hget(keys.redrive(redrive_id), "status")
    holding, status = pipe.execute()
    return holding > 0, status == "running"


def _replay_one(redrive_id: str, record_id: str, target: str | None) -> int:
    """Replay one record and count its outcome; 1 if it was replayed."""
    try:
        replay.replay(record_id, actor=_actor(redrive_id), queue=target)
    except DlqError as exc:
        if exc.code == "locked":  # someone is replaying it this instant: try again later
            _put_back(redrive_id, [record_id], "tail")
        else:
            _settle(redrive_id, record_id, "refused", f"refused:{exc.code}")
        return 0
    except (PayloadError, UnknownJob):
        _settle(redrive_id, record_id, "refused", "refused:invalid")
        return 0
    except (redis.ConnectionError, redis.TimeoutError):
        raise  # the id stays in flight; the next tick looks at its lineage
    except Exception as exc:  # a bug with one record must not stall the whole redrive
        return _unexpected(redrive_id, record_id, exc)
    _settle(redrive_id, record_id, "replayed")
    return 1


def _unexpected(redrive_id: str, record_id: str, exc: Exception) -> int:
    log.exception("redrive %s: replaying %s failed", redrive_id, record_id)
    if _replayed_by(record_id, _actor(redrive_id)):
        _settle(redrive_id, record_id, "replayed")
        return 1
    _settle(redrive_id, record_id, "errors")
    client().hset(keys.redrive(redrive_id), "last_error",
                  f"{record_id}: {type(exc).__name__}: {exc}"[:500])
    return 0


def _settle(redrive_id: str, record_id: str, *counters: str) -> None:
    _script("settle")(keys=[keys.redrive_inflight(redrive_id), keys.redrive(redrive_id)],
                      args=[record_id, time.time(), *counters])


def _put_back(redrive_id: str, ids: list[str], end: str) -> None:
    _script("put_back")(keys=[keys.redrive_inflight(redrive_id),
                              keys.redrive_pending(redrive_id)], args=[end, *ids])


def _replayed_by(record_id: str, actor: str) -> bool:
    return any(item.get("actor") == actor for item in dlq.lineage(record_id))


def _resolve_leftovers(redrive_id: str) -> None:
    """Settle ids a driver left in flight (it died, or Redis failed mid-tick).

    An id whose record's lineage holds this redrive's attempt was replayed: count it. Any
    other was not: put it back at the head of the pending list.
    """
    leftovers = client().lrange(keys.redrive_inflight(redrive_id), 0, -1)
    if not leftovers:
        return
    actor = _actor(redrive_id)
    replayed = {i for i in leftovers if _replayed_by(i, actor)}
    for record_id in replayed:
        _settle(redrive_id, record_id, "replayed")
    if len(replayed) < len(leftovers):
        _put_back(redrive_id, [i for i in leftovers if i not in replayed], "head")
    log.warning("redrive %s: took over %d id(s) left in flight, %d already replayed",
                redrive_id, len(leftovers), len(replayed))


def _finish(redrive_id: str, worker_id: str) -> None:
    """Mark a redrive with nothing left done, or clean up after a cancelled one."""
    scope = client().hget(keys.redrive(redrive_id), "scope") or "*"
    outcome = _script("finish")(
        keys=[keys.redrive(redrive_id), keys.redrive_pending(redrive_id),
              keys.redrive_inflight(redrive_id), keys.redrive_lease(redrive_id),
              keys.redrives_live(), keys.redrive_slot(scope)],
        args=[redrive_id, worker_id, time.time(), KEEP_SECONDS])
    if outcome == "done":
        done = progress(redrive_id)
        publish("redrive.finished", source="dlq", redrive=redrive_id, total=done["total"],
                replayed=done["replayed"], refused=done["refused"], errors=done["errors"])
