"""Settings that protect the operator: masked secrets, a state TTL that covers the windows."""

from __future__ import annotations

import pytest

from stream.errors import ConfigError
from stream.settings import MIN_STATE_TTL_S, load_settings, mask_url


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://h:6379/0?password=pw", "redis://h:6379/0?password=***"),
    ("unix:///run/r.sock?password=pw&db=0", "unix:///run/r.sock?password=***&db=0"),
    ("redis://h:6379/0?db=0&PASSWORD=pw", "redis://h:6379/0?db=0&PASSWORD=***"),
    ("redis://u:pw@h:6379/0?password=pw2", "redis://u:***@h:6379/0?password=***"),
    ("redis://h:6379/0?db=0", "redis://h:6379/0?db=0"),
])
def test_a_password_is_masked_wherever_the_url_carries_it(url, masked):
    assert mask_url(url) == masked
    assert "pw" not in str(load_settings(redis_url=url).masked()["redis_url"])


def test_a_state_ttl_shorter_than_the_longest_window_plus_a_margin_is_refused():
    assert MIN_STATE_TTL_S == 29 * 86_400
    with pytest.raises(ConfigError) as e:
        load_settings(state_ttl_s=7 * 86_400)
    msg = str(e.value)
    assert "\n" not in msg and "RISKSTREAM_STATE_TTL_S" in msg and "28 days" in msg
    assert load_settings(state_ttl_s=MIN_STATE_TTL_S).state_ttl_s == MIN_STATE_TTL_S


def test_state_writes_wait_for_a_replica_on_a_cluster_by_default_and_the_setting_is_checked(monkeypatch):
    assert load_settings().redis_replicas_to_wait == 0  # standalone: no replica to wait for
    assert load_settings(redis_cluster=True).redis_replicas_to_wait == 1  # a failover loses nothing committed
    assert load_settings(redis_cluster=True, redis_wait_replicas=0).redis_replicas_to_wait == 0
    monkeypatch.setenv("RISKSTREAM_REDIS_WAIT_REPLICAS", "2")
    assert load_settings().redis_replicas_to_wait == 2
    monkeypatch.setenv("RISKSTREAM_REDIS_WAIT_REPLICAS", "-1")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "\n" not in str(e.value) and "REDIS_WAIT_REPLICAS" in str(e.value).upper()
    monkeypatch.delenv("RISKSTREAM_REDIS_WAIT_REPLICAS")
    with pytest.raises(ConfigError):
        load_settings(redis_wait_timeout_ms=0)
