"""The compiled window update rule (numba) over per-user state rows."""

from __future__ import annotations

import math
from typing import Any, Final

import numba
import numpy as np

from stream.core import layout as L
from stream.core.jit import CacheGuard, constants_key
from stream.core.windows.types import TZ_ABSENT

__all__ = ["APPLIED", "GUARD", "TOO_LATE", "apply_kernel"]

# --- the update rule, compiled ------------------------------------------------------------------
# numba freezes these module globals into the compiled code as constants.
_NONE, _MAX, _LONGEST, _GAP, _WAKING, _SQ = (
    L.NONE, L.U32_MAX, L.LONGEST_WINDOW_MS, L.SESSION_GAP_MS, L.WAKING_GAP_MAX_MS, L.SQ_UNIT_S2)
_HOUR_MS, _DAY_MS, _TICK_MS, _TZ_BIAS, _LOG_SCALE = L.HOUR_MS, L.DAY_MS, L.TICK_MS, L.TZ_BIAS, L.LOG_SCALE
_SHORT, _LONG = L.SHORT_SESSION_MS, L.LONG_SESSION_MS
_S_SS, _S_SE, _S_SD, _S_LC, _S_HH, _S_DH, _S_FD, _S_TZ, _S_MX, _S_PT, _S_LT = (
    L.S_SS, L.S_SE, L.S_SD, L.S_LC, L.S_HH, L.S_DH, L.S_FD, L.S_TZ, L.S_MX, L.S_PT, L.S_LT)
_H_BASE, _D_BASE, _X_BASE, _W = L.H_BASE, L.D_BASE, L.X_BASE, L.RING_WORDS
_HS, _DS, _XS = L.HOUR_SLOTS, L.DAY_SLOTS, L.DETAIL_SLOTS
_HN, _DN, _XN = len(L.H_FIELDS), len(L.D_FIELDS), len(L.X_FIELDS)
_H_ACT, _H_SESS, _D_ACT, _D_SESS, _D_CLOSED, _D_LOGLEN = (
    L.H_ACTIVE, L.H_SESSIONS, L.D_ACTIVE, L.D_SESSIONS, L.D_CLOSED, L.D_LOGLEN)
_X_CLOSED, _X_SHORT15, _X_LONG30, _X_LEN_S, _X_LOGLEN, _X_LOGLEN_SQ = (
    L.X_CLOSED, L.X_SHORT15, L.X_LONG30, L.X_LEN_S, L.X_LOGLEN, L.X_LOGLEN_SQ)
_X_GAP_N, _X_GAP_S, _X_GAP_SQ, _X_GAP_LOG, _X_RMSSD_N, _X_RMSSD_SQ = (
    L.X_GAP_N, L.X_GAP_S, L.X_GAP_SQ, L.X_GAP_LOG, L.X_RMSSD_N, L.X_RMSSD_SQ)
_X_CAT0, _X_VIEWS, _X_DWELL, _X_CLICKS = L.X_CAT0, L.X_VIEWS, L.X_DWELL_S, L.X_CLICKS

_KERNEL_KEY: Final = constants_key(L.LAYOUT_SPEC, L.NONE, L.U32_MAX, L.HOUR_MS, L.DAY_MS, L.TZ_BIAS, TZ_ABSENT)
"""The constants the kernels bake in (see :mod:`stream.core.jit`)."""
APPLIED, TOO_LATE = 0, 1
"""Per-event status the kernel reports."""


@numba.njit(cache=True, nogil=True)
def _add(r: Any, u: int, i: int, inc: int) -> None:
    v = np.int64(r[u, i]) + inc
    r[u, i] = v if v <= _MAX else _MAX


@numba.njit(cache=True, nogil=True)
def _fixed(x: float) -> int:
    # floor(x + 0.5): the rounding every twin uses (Python's round() is banker's)
    return np.int64(math.floor(x + 0.5))  # type: ignore[return-value]


@numba.njit(cache=True, nogil=True)
def _zero_passed(r: Any, u: int, base: int, slots: int, nfields: int, head: int, new_head: int) -> None:
    """Zero the slots of the buckets a ring head passes moving from ``head`` to ``new_head``
    (all of them when it never moved or moves by a full ring or more)."""
    if head == _NONE or new_head - head >= slots:
        r[u, base:base + slots * nfields] = 0
    else:
        for b in range(head + 1, new_head + 1):
            i = base + (b % slots) * nfields
            r[u, i:i + nfields] = 0


@numba.njit(cache=True, nogil=True)
def _advance(r: Any, sc: Any, u: int, hb: int, db: int) -> None:
    """Move ring heads forward, zeroing the slots of buckets that are new or wrapped."""
    hh = sc[u, _S_HH]
    if hh == _NONE or hb > hh:
        _zero_passed(r, u, _H_BASE, _HS, _HN, hh, hb)
        sc[u, _S_HH] = hb
    dh = sc[u, _S_DH]
    if dh == _NONE or db > dh:
        _zero_passed(r, u, _D_BASE, _DS, _DN, dh, db)  # the day ring and the detail ring share dh
        _zero_passed(r, u, _X_BASE, _XS, _XN, dh, db)
        sc[u, _S_DH] = db


@numba.njit(cache=True, nogil=True)
def _close_session(r: Any, sc: Any, u: int) -> None:
    len_ms = sc[u, _S_SE] - sc[u, _S_SS]
    sd = sc[u, _S_SD]
    len_s = len_ms / 1000.0
    ln = math.log(1.0 + len_s)
    lg = _fixed(_LOG_SCALE * ln)
    dh = sc[u, _S_DH]
    if sd > dh - _XS:
        xi = _X_BASE + (sd % _XS) * _XN
        _add(r, u, xi + _X_CLOSED, 1)
        if len_ms < _SHORT:
            _add(r, u, xi + _X_SHORT15, 1)
        if len_ms >= _LONG:
            _add(r, u, xi + _X_LONG30, 1)
        _add(r, u, xi + _X_LEN_S, len_ms // 1000)
        _add(r, u, xi + _X_LOGLEN, lg)
        _add(r, u, xi + _X_LOGLEN_SQ, _fixed(_LOG_SCALE * (ln * ln)))
        lc = sc[u, _S_LC]
        if lc != _NONE:
            d = (len_ms - lc) / 1000.0
            _add(r, u, xi + _X_RMSSD_N, 1)
            _add(r, u, xi + _X_RMSSD_SQ, _fixed(d * d / _SQ))
    if sd > dh - _DS:
        di = _D_BASE + (sd % _DS) * _DN
        _add(r, u, di + _D_CLOSED, 1)
        _add(r, u, di + _D_LOGLEN, lg)
    sc[u, _S_LC] = len_ms


@numba.njit(cache=True, nogil=True)
def _emit(r: Any, sc: Any, u: int, tick_end: int, abi: int, k: int, out_rings: Any, out_sc: Any,
          out_tick: Any, out_abi: Any) -> int:
    out_rings[k, :] = r[u, :]
    out_sc[k, :] = sc[u, :]
    out_tick[k] = tick_end
    out_abi[k] = abi
    return k + 1


@numba.njit(cache=True, nogil=True)
def apply_kernel(r: Any, sc: Any, seg_slot: Any, seg_lo: Any, seg_hi: Any,
                  ts_a: Any, view_a: Any, dwell_a: Any, cat_a: Any, tz_a: Any, ab_a: Any, late_a: Any,
                  seg_wm: Any, out_rings: Any, out_sc: Any, out_tick: Any, out_abi: Any,
                  seg_out: Any, seg_ab: Any, seg_pt: Any, status: Any) -> int:
    """Apply each segment's events (one user per segment, canonical order) to state rows; a
    segment's pending tick is decided when its watermark (``seg_wm``) passed the tick's end.

    Writes a snapshot row for every tick it decides (``out_*``; ``out_abi`` = index of the newest
    applied event that carried an age band, -1 for the band stored before the call), the first
    output row of each segment (``seg_out``), the newest band-carrying event per segment
    (``seg_ab``), the user's pending tick after each segment (``seg_pt``) and each event's status;
    returns the number of snapshot rows.
    """
    k = 0
    for g in range(seg_slot.shape[0]):
        u = seg_slot[g]
        seg_out[g] = k
        abi = -1
        for e in range(seg_lo[g], seg_hi[g]):
            ts = ts_a[e]
            mx = sc[u, _S_MX]
            if mx != _NONE and ts < mx - _LONGEST:
                status[e] = TOO_LATE
                continue
            status[e] = APPLIED
            late = late_a[e] != 0
            tick = ts // _TICK_MS
            if not late:
                pt = sc[u, _S_PT]
                if pt != _NONE and tick > pt:
                    # the state as of the tick end: before anything of this event (tz, band) lands
                    k = _emit(r, sc, u, (pt + 1) * _TICK_MS, abi, k, out_rings, out_sc, out_tick, out_abi)
                    sc[u, _S_PT] = _NONE
            tz = tz_a[e]
            if tz != TZ_ABSENT:
                sc[u, _S_TZ] = tz + _TZ_BIAS
            elif sc[u, _S_TZ] != _NONE:
                tz = sc[u, _S_TZ] - _TZ_BIAS
            else:
                tz = 0
            if ab_a[e] != 0:
                abi = e
            lt = ts + tz * 60_000
            hb = lt // _HOUR_MS
            db = lt // _DAY_MS
            if sc[u, _S_HH] == _NONE or hb > sc[u, _S_HH] or sc[u, _S_DH] == _NONE or db > sc[u, _S_DH]:
                _advance(r, sc, u, hb, db)
            hh = sc[u, _S_HH]
            dh = sc[u, _S_DH]
            hi = _H_BASE + (hb % _HS) * _HN
            di = _D_BASE + (db % _DS) * _DN
            xi = _X_BASE + (db % _XS) * _XN
            is_view = view_a[e] != 0
            dwell = dwell_a[e] if is_view else 0
            if late:
                inc = dwell
                sc[u, _S_LT] += 1
            else:
                end = ts + dwell
                se = sc[u, _S_SE]
                if se == _NONE or ts > se + _GAP:
                    if se != _NONE:
                        _close_session(r, sc, u)
                    sc[u, _S_SS] = ts
                    sc[u, _S_SE] = end
                    sc[u, _S_SD] = db
                    inc = dwell
                    _add(r, u, hi + _H_SESS, 1)
                    _add(r, u, di + _D_SESS, 1)
                    if se != _NONE and ts - se < _WAKING:
                        gap_ms = ts - se
                        gs = gap_ms / 1000.0
                        _add(r, u, xi + _X_GAP_N, 1)
                        _add(r, u, xi + _X_GAP_S, gap_ms // 1000)
                        _add(r, u, xi + _X_GAP_SQ, _fixed(gs * gs / _SQ))
                        _add(r, u, xi + _X_GAP_LOG, _fixed(_LOG_SCALE * math.log(1.0 + gs)))
                elif end > se:
                    inc = end - se
                    sc[u, _S_SE] = end
                else:
                    inc = 0
                if sc[u, _S_PT] == _NONE or tick > sc[u, _S_PT]:
                    sc[u, _S_PT] = tick
            if inc != 0:
                if hb > hh - _HS:
                    _add(r, u, hi + _H_ACT, inc)
                if db > dh - _DS:
                    _add(r, u, di + _D_ACT, inc)
            if db > dh - _XS:
                if inc != 0:
                    _add(r, u, xi + _X_CAT0 + cat_a[e], inc)
                if is_view:
                    _add(r, u, xi + _X_VIEWS, 1)
                    _add(r, u, xi + _X_DWELL, dwell // 1000)
                else:
                    _add(r, u, xi + _X_CLICKS, 1)
            if mx == _NONE or ts > mx:
                sc[u, _S_MX] = ts
            if sc[u, _S_FD] == _NONE or db < sc[u, _S_FD]:
                sc[u, _S_FD] = db
        pt = sc[u, _S_PT]
        if pt != _NONE and (pt + 1) * _TICK_MS <= seg_wm[g]:
            k = _emit(r, sc, u, (pt + 1) * _TICK_MS, abi, k, out_rings, out_sc, out_tick, out_abi)
            sc[u, _S_PT] = _NONE
        seg_ab[g] = abi
        seg_pt[g] = sc[u, _S_PT]
    return k


@numba.njit(cache=True, nogil=True)
def _compiled_key() -> int:
    return _KERNEL_KEY


GUARD = CacheGuard(_KERNEL_KEY, _compiled_key,
                    (_add, _fixed, _zero_passed, _advance, _close_session, _emit, apply_kernel))
