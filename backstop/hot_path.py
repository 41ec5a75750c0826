"""The hot paths' Redis link (an enqueue; a worker's START and FINISH scripts): each
thread's own connection to a pool's server, used without the pool.

redis-py's generic call takes a connection from the pool, checks with a non-blocking read that
it holds no stale reply, runs the command through its retry helper and gives the connection
back: about 25 µs of the caller's CPU per call, half of what a raw Huey enqueue costs in all,
and a contended lock for a worker's threads. A hot path instead writes its commands on its
thread's own connection, each as soon as it is built, and then reads their replies. The
connection is made like the pool's (same class, socket options, server, Sentinel discovery
included), so timeouts and failover behave the same.

A connection whose exchange failed part-way is dropped (it may hold a late reply). After a
connection error the exchange is tried once more on a new connection, as redis-py's default
retry does (a link the server closed while idle is found this way): an enqueue that ran
already finds its record and adds nothing, and a START whose reply was lost leaves a message
that the worker's reconciliation returns. A timeout is not retried: the caller's outage
policy takes the job, and the enqueue script's dedupe by id keeps a second push from adding
it twice.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Iterable, Iterator

import hiredis
import redis
from redis.commands.core import Script
from redis.connection import AbstractConnection

_local = threading.local()


def exchange(pool: redis.ConnectionPool, commands: Iterable[tuple]) -> list:
    """Send commands on this thread's connection to pool's server, each as soon as the
    iterable gives it (Redis runs one while the caller builds the next), then read their
    replies in order. An error reply raises (as redis-py would) once every reply is read."""
    sent: list[tuple] = []
    rest = iter(commands)
    try:
        return _exchange(_connection(pool), _noting(rest, sent))
    except redis.ConnectionError:  # e.g. a link the server closed while it was idle
        return _exchange(_connection(pool), itertools.chain(sent, rest))


def _noting(commands: Iterator[tuple], sent: list[tuple]) -> Iterator[tuple]:
    for command in commands:
        sent.append(command)
        yield command


def _exchange(connection: AbstractConnection, commands: Iterable[tuple]) -> list:
    try:
        count = 0
        for command in commands:
            connection.send_packed_command([hiredis.pack_command(command)], check_health=False)
            count += 1
        replies = [_reply(connection) for _ in range(count)]
    except BaseException:
        _forget(connection)
        raise
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            if isinstance(reply, redis.ReadOnlyError):  # a demoted primary: find the new one
                _forget(connection)
            raise reply
    return replies


def _reply(connection: AbstractConnection):
    try:
        return connection.read_response()
    except redis.ResponseError as exc:  # read the other replies too, then raise it
        return exc


def run_script(pool: redis.ConnectionPool, script: Script, keys: list, args: list):
    """What ``script(keys=keys, args=args)`` answers, run on this thread's connection to
    pool's server."""
    return run_scripts(pool, script, [(len(keys), *keys, *args)])[0]


def run_scripts(pool: redis.ConnectionPool, script: Script, calls: Iterable[tuple], *,
                then: tuple | None = None) -> list:
    """Run script once per call ((numkeys, *keys, *args)), each sent as it is built, then the
    command `then` if one is given, in one exchange; return the replies (then's last). If
    Redis does not know the script (a restart, SCRIPT FLUSH, a new primary), load it and send
    everything again: an enqueue that ran already finds its record and adds nothing, a START
    whose reply was lost leaves a message the worker's reconciliation returns."""
    sent: list[tuple] = []

    def commands() -> Iterator[tuple]:
        for call in calls:
            sent.append(("EVALSHA", script.sha, *call))
            yield sent[-1]
        if then:
            sent.append(then)
            yield then

    pending: Iterable[tuple] = commands()
    for _ in range(2):  # twice: a retry after the load may reach a new primary without it
        try:
            return exchange(pool, pending)
        except redis.exceptions.NoScriptError:
            exchange(pool, [("SCRIPT", "LOAD", script.script)])
            pending = sent
    return exchange(pool, sent)


def _connection(pool: redis.ConnectionPool) -> AbstractConnection:
    """This thread's connection to pool's server (one per pool: a worker thread uses both
    the decoded client's and Huey's binary pool); a new one after a fork. A pool that is
    gone (connection.reset) takes its thread's connections with it (a weak key)."""
    held = _held()
    found = held.get(pool)
    if found and found[0] == os.getpid():
        return found[1]
    connection = pool.connection_class(**pool.connection_kwargs)
    # connect() now, as the pool would: a Sentinel-managed connection asks the Sentinels for
    # the primary only in connect(); a first send would connect to its default address.
    connection.connect()
    held[pool] = (os.getpid(), connection)
    return connection


def _held() -> weakref.WeakKeyDictionary:
    if not hasattr(_local, "held"):
        _local.held = weakref.WeakKeyDictionary()
    return _local.held


def _forget(connection: AbstractConnection) -> None:
    connection.disconnect()
    held = _held()
    for pool, (_, kept) in list(held.items()):
        if kept is connection:
            del held[pool]
