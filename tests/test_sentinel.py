"""Redis Sentinel (backstop.connection) and REDIS_MIN_REPLICAS_ACK (backstop.replication),
against a real primary, replica and three Sentinels (tests/sentinel_cluster.py)."""

from __future__ import annotations

import pytest
import redis
from conftest import apply_env, wait_for
from sentinel_cluster import DATA_PASSWORD, SERVICE, cluster_fixture  # noqa: F401

import tests.jobs_for_tests  # noqa: F401  (registers the test jobs)
from backstop import connection, keys, producers, replication

# ---- settings ----


@pytest.mark.parametrize("value", ["10.0.0.1", "10.0.0.1:26379,", "host:port", "h:70000", ":1"])
def test_a_bad_sentinel_list_is_refused_naming_the_setting(value):
    apply_env(REDIS_SENTINELS=value, REDIS_SENTINEL_SERVICE=SERVICE)
    with pytest.raises(connection.BadSentinelSetting, match="REDIS_SENTINELS: .* host:port"):
        connection.client()


def test_the_sentinel_list_is_read_as_host_port_pairs():
    apply_env(REDIS_SENTINELS=" 10.0.0.1:26379, sentinel-b:26380,[::1]:26381 ",
              REDIS_SENTINEL_SERVICE=SERVICE)
    assert connection.sentinels() == (("10.0.0.1", 26379), ("sentinel-b", 26380),
                                      ("::1", 26381))
    apply_env(REDIS_SENTINELS="")
    assert connection.sentinels() == ()


def test_sentinels_without_a_service_name_are_refused_naming_it():
    apply_env(REDIS_SENTINELS="127.0.0.1:26379", REDIS_SENTINEL_SERVICE="")
    with pytest.raises(connection.BadSentinelSetting, match="REDIS_SENTINEL_SERVICE"):
        connection.raw_pool()


def test_a_unix_socket_url_cannot_go_with_sentinels():
    apply_env(REDIS_SENTINELS="127.0.0.1:26379", REDIS_SENTINEL_SERVICE=SERVICE,
              REDIS_URL="unix:///tmp/redis.sock?db=2")
    with pytest.raises(connection.BadSentinelSetting, match="REDIS_URL is a unix socket"):
        connection.client()


# ---- finding and following the primary ----


def test_every_client_finds_the_primary_through_sentinel(cluster, redis_url):
    """REDIS_URL names another server (the tests' own Redis): Sentinel decides where the
    primary is; REDIS_URL gives only the password and the database."""
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    apply_env(REDIS_URL=f"redis://:{DATA_PASSWORD}@127.0.0.1:{port}/3")
    connection.client().set("seen:client", "1")
    redis.Redis(connection_pool=connection.raw_pool()).set("seen:raw", "1")
    subscriber = connection.dedicated(client_name="test-dedicated")
    subscriber.set("seen:dedicated", "1")
    subscriber.close()
    single = producers.enqueue("test.work", {})  # the hot path's own connection
    batch = producers.enqueue_many([{"job": "test.work"}])[0]
    primary = cluster.data(cluster.primary_port())
    primary.select(3)
    assert primary.mget("seen:client", "seen:raw", "seen:dedicated") == ["1", "1", "1"]
    assert primary.exists(keys.job(single), keys.job(batch)) == 2
    assert redis.Redis.from_url(redis_url, db=3).exists("seen:client") == 0
    assert connection.redis_url().startswith("redis+sentinel://127.0.0.1:")


def test_the_clients_follow_a_failover(cluster):
    """Pooled connections to the old primary are dropped; the next calls reach the new one
    (pub/sub included)."""
    client, raw = connection.client(), redis.Redis(connection_pool=connection.raw_pool())
    subscriber = connection.dedicated().pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("test:channel")
    client.set("before", "1")
    raw.get("before")
    old = cluster.primary_port()
    cluster.sentinel(next(iter(cluster.sentinel_procs))).sentinel_failover(SERVICE)
    new = cluster.wait_for_failover(old)
    wait_for(lambda: _writable(client), 15, 0.1, what="the client to reach the new primary")
    raw.set("after-raw", "1")
    assert cluster.data(new).mget("after", "after-raw") == ["1", "1"]
    wait_for(lambda: _republished(subscriber, client), 15, 0.1,
             what="the subscriber to follow the failover")
    subscriber.close()


def _writable(client: redis.Redis) -> bool:
    try:
        return bool(client.set("after", "1"))
    except redis.RedisError:
        return False


def _republished(subscriber, client: redis.Redis) -> bool:
    try:
        client.publish("test:channel", "hello")
        message = subscriber.get_message(timeout=0.2)
    except redis.RedisError:
        subscriber.subscribe("test:channel")  # what the live hub does: subscribe again
        return False
    return bool(message and message["data"] == "hello")


def test_a_demoted_primary_refusing_a_script_drops_the_connection(cluster):
    """A script's write refused by a read-only server comes back inside a script error:
    the connection is dropped as a lost one (a ConnectionError: redis-py's retries, and every
    later connection, ask Sentinel for the primary again)."""
    client = connection.client()
    assert producers.submit("test.work", {})[1]
    primary = cluster.data(cluster.primary_port())
    elsewhere = cluster.start_server()
    primary.replicaof("127.0.0.1", elsewhere)  # demoted behind Sentinel's back
    wait_for(lambda: primary.info("replication")["master_link_status"] == "up", 15)
    with pytest.raises(redis.ConnectionError, match="demoted"):
        client.register_script("return redis.call('SET', KEYS[1], '1')")(keys=["demoted"])


def test_the_rate_limiter_stores_its_counts_on_the_primary(cluster):
    from app import create_app

    app = create_app()
    app.testing = True
    app.test_client().get("/login")
    primary = cluster.data(cluster.primary_port())
    assert primary.keys("LIMITS:LIMITER/backstop-limits/*")


# ---- REDIS_MIN_REPLICAS_ACK ----


def test_an_enqueue_waits_for_a_replica(cluster):
    """(On a server that has not seen the enqueue script, a new primary after a failover, the
    script is loaded and the enqueue sent again.)"""
    apply_env(REDIS_MIN_REPLICAS_ACK="1", REDIS_REPLICA_ACK_TIMEOUT_MS="300")
    for _ in range(2):
        cluster.data(cluster.primary_port()).script_flush()
        outcome = producers.dispatch("test.work", {})
        assert (outcome.how, outcome.state) == ("queued", "waiting")
    assert producers.submit("test.work", {})[1]
    assert len(producers.enqueue_many([{"job": "test.work"}] * 3)) == 3


def test_an_enqueue_no_replica_confirmed_is_not_acknowledged(cluster):
    """WAIT goes on the enqueue's own connection: with the replica frozen it cannot confirm
    the write, so the job goes to the outbox (the queue's outage policy) instead of being
    acknowledged as queued. (WAIT on another connection, which wrote nothing, would count
    the frozen replica and answer at once.)"""
    apply_env(REDIS_MIN_REPLICAS_ACK="1", REDIS_REPLICA_ACK_TIMEOUT_MS="300")
    primary_port = cluster.primary_port()
    replica = next(port for port in cluster.servers if port != primary_port)
    cluster.pause(replica)
    try:
        outcome = producers.dispatch("test.work", {})
        assert (outcome.how, outcome.extra) == ("outbox", {"outbox": True})
        with pytest.raises(replication.NotReplicated, match="0 of 1 replicas"):
            producers.submit("test.work", {})
        with pytest.raises(replication.NotReplicated):
            producers.enqueue_many([{"job": "test.work"}] * 2)
    finally:
        cluster.resume(replica)
    # The primary took the job; only the acknowledgement was refused (the outbox's later
    # push of the same id adds nothing).
    assert cluster.data(primary_port).hget(keys.job(outcome.job_id), "state") == "waiting"
