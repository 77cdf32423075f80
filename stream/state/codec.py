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

__all__ = ["SCALARS_DTYPE", "STATE_SUFFIX", "pack_rings", "pack_state", "pseudonym", "unpack_rings", "unpack_state",
           "user_key", "user_tag"]

STATE_SUFFIX: Final = ":u"
SCALARS_DTYPE: Final = np.dtype(">i8")

_F_VERSION, _F_RINGS, _F_STATE, _F_POLICY = b"v", b"r", b"st", b"pol"
_F_GENERATION: Final = b"g"  # the writer's consumer group generation (absent: 0)
_SCALAR_BYTES: Final = 8 * len(L.SCALARS)
_BAND_NONE: Final = 0xFFFF
_NO_BAND: Final = _BAND_NONE.to_bytes(2, "big")
_SPARSE: Final = b"\x01"  # first byte of a sparse ring field
_BITMAP_BYTES: Final = (L.RING_WORDS + 7) // 8
_SPARSE_HEAD: Final = len(_SPARSE) + _BITMAP_BYTES


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


def pack_rings(rings: NDArray[np.uint32]) -> list[bytes]:
    """The ``r`` field of each row of ``rings`` (users × ``RING_WORDS``), the shorter of two forms
    (docs/state-layout.md §4):

    * **sparse** — ``0x01``, a bitmap of the non-zero words (``RING_WORDS`` bits, word 0 in the
      most significant bit of the first byte), then those words as big-endian u32 in word order:
      ``79 + 4·k`` bytes for ``k`` non-zero words, used while that is under ``RING_BYTES``;
    * **dense** — every word, big-endian u32: exactly ``RING_BYTES`` bytes.

    Most users fill few slots of a week of hours and four weeks of days, and a write costs Redis in
    proportion to its bytes (script arguments, the hash, the append-only file): the sparse form of
    the streaming bench's users is ≈ 200 bytes instead of 2,496.
    """
    nz = rings != 0
    packed = np.packbits(nz, axis=1)
    counts = nz.view(np.uint8).sum(axis=1, dtype=np.int32)  # 4× faster than count_nonzero(axis=1)
    dense_rows = _SPARSE_HEAD + 4 * counts >= L.RING_BYTES
    dense = rings[:0].astype(L.RING_DTYPE)
    if dense_rows.all():
        dense, nz = rings.astype(L.RING_DTYPE), nz[:0]
    elif dense_rows.any():  # those go out whole
        dense = rings[dense_rows].astype(L.RING_DTYPE)
        nz, rings = nz[~dense_rows], rings[~dense_rows]
    # row-major: each row's non-zero words in word order (np.compress: faster than a boolean index)
    words = np.compress(nz.ravel(), rings.ravel()).astype(L.RING_DTYPE).tobytes()
    bitmaps = packed.tobytes()
    out: list[bytes] = []
    lo, at, bb = 0, 0, _BITMAP_BYTES
    for i, (k, full) in enumerate(zip(counts.tolist(), dense_rows.tolist(), strict=True)):
        if full:  # a row's own tobytes: cheaper than slicing one bytes object of them all
            out.append(dense[at].tobytes())
            at += 1
        else:
            hi = lo + 4 * k
            out.append(_SPARSE + bitmaps[i * bb:(i + 1) * bb] + words[lo:hi])
            lo = hi
    return out


def unpack_rings(field: bytes) -> bytes:
    """The dense rings (``RING_BYTES``, big-endian u32 words) of an ``r`` field in either form.

    Raises:
        ValueError: the field is neither form (its length, tag or bitmap does not add up).
    """
    if len(field) == L.RING_BYTES:
        return field
    if len(field) < _SPARSE_HEAD or field[:1] != _SPARSE or (len(field) - _SPARSE_HEAD) % 4:
        raise ValueError(f"ring is {len(field)} bytes: neither {L.RING_BYTES} (dense) nor a sparse ring")
    mask = np.unpackbits(np.frombuffer(field, np.uint8, _BITMAP_BYTES, 1), count=L.RING_WORDS).astype(bool)
    k = (len(field) - _SPARSE_HEAD) // 4
    if int(np.count_nonzero(mask)) != k:
        raise ValueError(f"sparse ring marks {int(np.count_nonzero(mask))} non-zero words and holds {k}")
    dense = np.zeros(L.RING_WORDS, L.RING_DTYPE)
    dense[mask] = np.frombuffer(field, L.RING_DTYPE, k, _SPARSE_HEAD)
    return dense.tobytes()


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
