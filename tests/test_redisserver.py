"""The ``redis_server`` fixture itself: a real server, and what a restart does to clients."""

from __future__ import annotations

import pytest
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.redisserver import RedisServer


async def test_set_get_round_trip(redis_server: RedisServer) -> None:
    assert redis_server.url == f"unix://{redis_server.socket_path}"
    client = aredis.Redis.from_url(redis_server.url)
    try:
        assert await client.set("budget", "42")
        assert await client.get("budget") == b"42"
        assert await client.config_get("save") == {"save": ""}
        assert await client.config_get("port") == {"port": "0"}
    finally:
        await client.aclose()


async def test_restart_comes_back_empty_on_the_same_socket(redis_server: RedisServer) -> None:
    before = aredis.Redis.from_url(redis_server.url)
    try:
        await before.set("budget", "42")
    finally:
        await before.aclose()
    url = redis_server.url

    redis_server.restart()

    assert redis_server.url == url
    after = aredis.Redis.from_url(redis_server.url)
    try:
        assert await after.get("budget") is None
        assert await after.dbsize() == 0
    finally:
        await after.aclose()


async def test_client_across_restart_fails_once_then_reconnects(redis_server: RedisServer) -> None:
    # What redis-py (8.x) does: a pool built by ``from_url`` gets no retry policy (unlike the
    # ``Redis(...)`` constructor's default), so the first command on the pooled connection that
    # the restart cut raises ConnectionError and drops it; the next command connects afresh.
    client = aredis.Redis.from_url(redis_server.url)
    try:
        await client.set("budget", "42")
        redis_server.restart()
        with pytest.raises(RedisConnectionError):
            await client.get("budget")
        assert await client.get("budget") is None
    finally:
        await client.aclose()


async def test_client_with_a_retry_reconnects_transparently(redis_server: RedisServer) -> None:
    # With one retry the cut connection is replaced silently: the only sign is the lost data.
    client = aredis.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 1))
    try:
        await client.set("budget", "42")
        redis_server.restart()
        assert await client.get("budget") is None
    finally:
        await client.aclose()
