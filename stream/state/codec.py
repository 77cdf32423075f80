"""The Redis key and value layout of a user's state (docs/state-layout.md): keys, blobs, field names."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

import numpy as np
import orjson
from numpy.typing import NDArray

from stream.core import layout as L

__all__ = ["SCALARS_DTYPE", "STATE_SUFFIX", "pack_state", "pseudonym", "unpack_state", "user_key", "user_tag"]

STATE_SUFFIX: Final = ":u"
SCALARS_DTYPE: Final = np.dtype(">i8")

_F_VERSION, _F_RINGS, _F_STATE, _F_POLICY = b"v", b"r", b"st", b"pol"
_F_GENERATION: Final = b"g"  # the writer's consumer group generation (absent: 0)
_SCALAR_BYTES: Final = 8 * len(L.SCALARS)
_BAND_NONE: Final = 0xFFFF
_NO_BAND: Final = _BAND_NONE.to_bytes(2, "big")


def user_tag(user_id: str) -> str:
    """The user's hash-tag text: the id with ``%``, ``{`` and ``}`` percent-escaped (injective)."""
    if "%" in user_id or "{" in user_id or "}" in user_id:
        return user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return user_id


def user_key(key_prefix: str, user_id: str, secret: bytes | None = None) -> bytes:
    """The user's state hash key, UTF-8 encoded: ``<prefix>{<tag>}:u``.

    With a ``secret`` (``RISKSTREAM_STATE_KEY_SECRET``) the tag is a keyed pseudonym instead of the
    id: the first 32 hex digits of HMAC-SHA-256(secret, id), so a Redis dump names no platform id
    and ids cannot be confirmed by hashing guesses without the secret.
    """
    tag = user_tag(user_id) if secret is None else pseudonym(secret, user_id)
    return f"{key_prefix}{{{tag}}}{STATE_SUFFIX}".encode()


def pseudonym(secret: bytes, user_id: str) -> str:
    """The keyed pseudonym of a user id (128 bits of HMAC-SHA-256, hex)."""
    return hmac.new(secret, user_id.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:32]


def pack_state(scalars: NDArray[np.int64], band: str | None,
               fence: Mapping[str, tuple[int, set[int]]] | None) -> bytes:
    """The ``st`` field: scalars (11 × big-endian i64), age band (big-endian u16 length, 0xFFFF =
    none, then UTF-8), offset fence (JSON ``{tp: [frontier, [offsets above it]]}``, the rest; may be
    empty)."""
    return scalars.astype(SCALARS_DTYPE).tobytes() + _pack_tail(band, fence)


def _pack_tail(band: str | None, fence: Mapping[str, tuple[int, set[int]]] | None) -> bytes:
    if band is None:
        band_part = _NO_BAND
    else:
        b = band.encode()
        band_part = len(b).to_bytes(2, "big") + b
    if not fence:
        return band_part
    return band_part + orjson.dumps({tp: [fr, sorted(applied)] for tp, (fr, applied) in fence.items()})


def unpack_state(blob: bytes) -> tuple[NDArray[np.int64], str | None, dict[str, tuple[int, set[int]]]]:
    """(scalars int64, age band, fence) from an ``st`` field."""
    if len(blob) < _SCALAR_BYTES + 2:
        raise ValueError(f"state is {len(blob)} bytes, at least {_SCALAR_BYTES + 2} expected")
    scalars = np.frombuffer(blob, SCALARS_DTYPE, len(L.SCALARS)).astype(np.int64)
    n = int.from_bytes(blob[_SCALAR_BYTES:_SCALAR_BYTES + 2], "big")
    at = _SCALAR_BYTES + 2
    band = None
    if n != _BAND_NONE:
        band = blob[at:at + n].decode()
        at += n
    fence: dict[str, tuple[int, set[int]]] = {}
    if at < len(blob):
        fence = {tp: (fr, set(applied)) for tp, (fr, applied) in orjson.loads(blob[at:]).items()}
    return scalars, band, fence
