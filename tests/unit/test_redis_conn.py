"""Sentinel URLs: Settings builds them from the environment; the pool is built from them."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

from shared.config import ConfigError, Settings
from shared.keys import Keys
from shared.redis_conn import connect, parse_sentinel_url, redact_url


def test_settings_build_a_sentinel_url_that_wins_over_redis_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26380")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    s = Settings()
    assert s.redis_url == "redis+sentinel://10.0.0.1:26379, 10.0.0.2:26380/mymaster"
    hosts, master, db, password = parse_sentinel_url(s.redis_url)
    assert (hosts, master, db, password) == ([("10.0.0.1", 26379), ("10.0.0.2", 26380)], "mymaster", 0, None)


def test_url_form_with_db_and_password_and_redaction():
    url = "redis+sentinel://:s3cret@h1:1,h2:2/m/3"
    assert parse_sentinel_url(url) == ([("h1", 1), ("h2", 2)], "m", 3, "s3cret")
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h1:1/", "REDIS_SENTINEL_MASTER is not set"),
        ("redis+sentinel:///m", "REDIS_SENTINELS is not set"),
        ("redis+sentinel://h1/m", "'h1' is not host:port"),
    ],
)
def test_half_configured_sentinel_says_what_is_missing(url: str, message: str):
    with pytest.raises(ConfigError, match=message):
        parse_sentinel_url(url)


async def test_connect_builds_a_sentinel_pool_that_retries_failover_errors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REDIS_PASSWORD", "datapw")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentpw")
    r = connect("redis+sentinel://127.0.0.1:1/m", Keys("x"))
    pool = r.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "m"
    assert pool.connection_kwargs["password"] == "datapw"
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "sentpw"
    conn = pool.make_connection()
    assert {ConnectionError, ReadOnlyError, TimeoutError} <= set(conn.retry_on_error)
    assert conn.retry._retries >= 30
    await r.aclose()


def test_the_cli_accepts_a_sentinel_url_and_refuses_a_broken_one():
    import pytest

    from producer.cli_errors import CliError, check_redis_url

    check_redis_url("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster")  # no error
    with pytest.raises(CliError, match="malformed"):
        check_redis_url("redis+sentinel://127.0.0.1:notaport/mymaster")
    with pytest.raises(CliError):
        check_redis_url("http://localhost:6379")
