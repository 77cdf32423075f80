"""Redis key naming: plain (escaped) user ids, or keyed pseudonyms (RISKSTREAM_STATE_KEY_SECRET)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from stream.errors import ConfigError
from stream.settings import load_settings
from stream.state import user_key


def test_plain_keys_carry_the_escaped_id() -> None:
    assert user_key("ns:rs:", "u{1}") == b"ns:rs:{u%7B1%7D}:u"


def test_pseudonymised_keys_carry_a_keyed_hash_not_the_id() -> None:
    secret = b"0123456789abcdef-secret"
    key = user_key("ns:rs:", "alice@example.com", secret)
    tag = hmac.new(secret, b"alice@example.com", hashlib.sha256).hexdigest()[:32]
    assert key == f"ns:rs:{{{tag}}}:u".encode()
    assert b"alice" not in key
    assert user_key("ns:rs:", "alice@example.com", b"another-secret-0000") != key  # keyed
    assert user_key("ns:rs:", "bob", secret) != key


def test_the_secret_must_be_long_enough_and_never_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="RISKSTREAM_STATE_KEY_SECRET.*at least 16 bytes"):
        load_settings(state_key_secret="short")
    s = load_settings(state_key_secret="a-long-enough-secret")
    assert s.key_secret == b"a-long-enough-secret"
    assert "a-long-enough-secret" not in str(s.masked()) and "a-long-enough-secret" not in repr(s)
