"""Redis key naming: plain (escaped) user ids, or keyed pseudonyms (RISKSTREAM_STATE_KEY_SECRET); the
ring field's two forms (docs/state-layout.md §4)."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core import layout as L
from stream.errors import ConfigError
from stream.settings import load_settings
from stream.state import user_key
from stream.state.codec import pack_rings, unpack_rings


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


@st.composite
def ring_tables(draw: st.DrawFn) -> np.ndarray:
    """Users × ring words with any share of non-zero words (counters up to 2^32 - 1)."""
    n = draw(st.integers(1, 6))
    table = np.zeros((n, L.RING_WORDS), np.uint32)
    for i in range(n):
        k = draw(st.sampled_from([0, 1, 2, 30, 300, 603, 604, 605, 606, L.RING_WORDS]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        at = rng.choice(L.RING_WORDS, k, replace=False)
        table[i, at] = rng.integers(1, L.U32_MAX, k, endpoint=True, dtype=np.uint32)
        if k and draw(st.booleans()):
            table[i, at[0]] = draw(st.sampled_from([1, L.U32_MAX]))  # the extremes
    return table


@given(ring_tables())
def test_ring_fields_round_trip_in_the_shorter_form(table: np.ndarray) -> None:
    fields = pack_rings(table)
    assert len(fields) == len(table)
    for row, field in zip(table, fields, strict=True):
        k = int(np.count_nonzero(row))
        dense = row.astype(">u4").tobytes()
        if 79 + 4 * k < L.RING_BYTES:  # sparse: 0x01, bitmap of the non-zero words, those words
            assert len(field) == 79 + 4 * k and field[:1] == b"\x01"
            assert np.array_equal(np.unpackbits(np.frombuffer(field[1:79], np.uint8)).astype(bool), row != 0)
        else:
            assert field == dense
        assert unpack_rings(field) == dense


def test_a_ring_field_that_is_neither_form_is_refused() -> None:
    dense = np.arange(L.RING_WORDS, dtype=">u4").tobytes()
    row = np.zeros((1, L.RING_WORDS), np.uint32)
    row[0, :10] = np.arange(1, 11)
    [sparse] = pack_rings(row)
    assert unpack_rings(sparse)[:40] == np.arange(1, 11, dtype=">u4").tobytes()
    for bad, why in [(dense[:-1], "neither"), (b"", "neither"), (b"\x02" + sparse[1:], "neither"),
                     (sparse[:-4], "marks 10 non-zero words and holds 9"), (sparse + b"\x00" * 4, "holds 11"),
                     (sparse[:-1], "neither")]:
        with pytest.raises(ValueError, match=why):
            unpack_rings(bad)
