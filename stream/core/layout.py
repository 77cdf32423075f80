"""The per-user window state layout: one source of truth for the window kernel, the Redis state
codec and the feature kernel.

A user's state is two things (see docs/state-layout.md):

* ``rings``: one flat array of unsigned 32-bit counters holding three rings of time buckets in the
  user's *local* time: 168 hour buckets (7 d), 28 day buckets (28 d) and 8 detailed day buckets.
  Counters saturate at ``U32_MAX``. Stored (Redis), it is one field of the user's hash holding the
  words big-endian; in a process it is a row of native-order words.
* ``scalars``: a handful of integers (open session, ring heads, first day, last tz, …) and the last
  known age band. Stored, they are packed into one blob field of the same hash.

Every constant that changes what the features mean is part of :data:`LAYOUT_SPEC`, which the feature
spec hash covers.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from stream.core.events import CATEGORIES

__all__ = [
    "CATEGORY_INDEX",
    "DAY_MS",
    "DAY_SLOTS",
    "DETAIL_SLOTS",
    "D_ACTIVE",
    "D_BASE",
    "D_CLOSED",
    "D_FIELDS",
    "D_LOGLEN",
    "D_SESSIONS",
    "HOUR_MS",
    "HOUR_SLOTS",
    "H_ACTIVE",
    "H_BASE",
    "H_FIELDS",
    "H_SESSIONS",
    "LAYOUT_SPEC",
    "LOG_SCALE",
    "LONGEST_WINDOW_MS",
    "LONG_SESSION_MS",
    "NONE",
    "RING_BYTES",
    "RING_DTYPE",
    "RING_WORDS",
    "SCALARS",
    "SESSION_GAP_MS",
    "SHORT_SESSION_MS",
    "SQ_UNIT_S2",
    "S_DH",
    "S_FD",
    "S_HH",
    "S_LC",
    "S_LT",
    "S_MX",
    "S_PT",
    "S_SD",
    "S_SE",
    "S_SS",
    "S_TZ",
    "TICK_MS",
    "TZ_BIAS",
    "U32_MAX",
    "WAKING_GAP_MAX_MS",
    "X_BASE",
    "X_CAT0",
    "X_CLICKS",
    "X_CLOSED",
    "X_DWELL_S",
    "X_FIELDS",
    "X_GAP_LOG",
    "X_GAP_N",
    "X_GAP_S",
    "X_GAP_SQ",
    "X_LEN_S",
    "X_LOGLEN",
    "X_LOGLEN_SQ",
    "X_LONG30",
    "X_RMSSD_N",
    "X_RMSSD_SQ",
    "X_SHORT15",
    "X_VIEWS",
    "d_index",
    "h_index",
    "x_index",
]

TICK_MS: Final = 60_000
# A model's ``thresholds`` metadata may carry this key: the number of day-end scores its thresholds
# are meant to be averaged over (the policy's ``evidence = "day_mean"``); 0 = per-tick evidence.
EVIDENCE_DAYS_KEY: Final = "evidence_days"
MAX_EVIDENCE_DAYS: Final = 7
"""Evaluation tick: scoring and policy run at event-time minute boundaries (docs/semantics.md §5)."""

SESSION_GAP_MS: Final = 30_000
"""A gap longer than this between activity ends a session (pickup sessions, docs/research.md §6)."""

WAKING_GAP_MAX_MS: Final = 4 * 3_600_000
"""Inter-session gaps at least this long are sleep or deliberate non-use; gap statistics skip them."""

SHORT_SESSION_MS: Final = 15_000
LONG_SESSION_MS: Final = 30 * 60_000

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000

HOUR_SLOTS: Final = 168
DAY_SLOTS: Final = 28
DETAIL_SLOTS: Final = 8

LONGEST_WINDOW_MS: Final = DAY_SLOTS * DAY_MS
"""An event older than the user's newest event minus this can no longer change any window."""

LOG_SCALE: Final = 256
"""Fixed-point scale for sums of logarithms (u32 counters hold round(256·x))."""

SQ_UNIT_S2: Final = 100
"""Sums of squared seconds are stored in units of 100 s² so that a day fits a u32."""

U32_MAX: Final = 0xFFFF_FFFF

# --- ring fields -----------------------------------------------------------------------------
H_FIELDS: Final = ("active_ms", "sessions")
D_FIELDS: Final = ("active_ms", "sessions", "closed", "loglen_sum")
X_FIELDS: Final = (
    "closed",
    "short15",
    "long30",
    "len_s_sum",
    "loglen_sum",
    "loglen_sq",
    "gap_n",
    "gap_s_sum",
    "gap_sq",
    "gap_log_sum",
    "rmssd_n",
    "rmssd_sq",
    "clicks",
    "views",
    "dwell_s",
    *(f"cat_ms_{c}" for c in CATEGORIES),
)

H_BASE: Final = 0
D_BASE: Final = H_BASE + HOUR_SLOTS * len(H_FIELDS)
X_BASE: Final = D_BASE + DAY_SLOTS * len(D_FIELDS)
RING_WORDS: Final = X_BASE + DETAIL_SLOTS * len(X_FIELDS)
RING_BYTES: Final = RING_WORDS * 4

H_ACTIVE, H_SESSIONS = range(len(H_FIELDS))
D_ACTIVE, D_SESSIONS, D_CLOSED, D_LOGLEN = range(len(D_FIELDS))
(
    X_CLOSED,
    X_SHORT15,
    X_LONG30,
    X_LEN_S,
    X_LOGLEN,
    X_LOGLEN_SQ,
    X_GAP_N,
    X_GAP_S,
    X_GAP_SQ,
    X_GAP_LOG,
    X_RMSSD_N,
    X_RMSSD_SQ,
    X_CLICKS,
    X_VIEWS,
    X_DWELL_S,
) = range(15)
X_CAT0: Final = 15
CATEGORY_INDEX: Final = {c: i for i, c in enumerate(CATEGORIES)}

# --- scalars -----------------------------------------------------------------------------------
NONE: Final = -1
"""Marker for an absent scalar (an absent hash field in Redis)."""

SCALARS: Final = (
    "ss",  # open session: start, event time ms
    "se",  # open session: end of its latest activity, event time ms
    "sd",  # open session: local day of its start
    "lc",  # length of the last closed session, ms (for RMSSD)
    "hh",  # newest hour bucket written (local hour number)
    "dh",  # newest day bucket written (local day number), shared by both day rings
    "fd",  # first local day seen
    "tz",  # last known UTC offset, minutes, plus TZ_BIAS (so that no offset collides with NONE)
    "mx",  # newest event time applied (the user's event-time watermark)
    "pt",  # pending evaluation tick (tick number with activity, not evaluated yet)
    "lt",  # late events counted (volume only)
)
S_SS, S_SE, S_SD, S_LC, S_HH, S_DH, S_FD, S_TZ, S_MX, S_PT, S_LT = range(len(SCALARS))

TZ_BIAS: Final = 1000
"""The tz scalar stores ``tz_offset_min + TZ_BIAS`` (160 … 1840): an offset of -1 is not NONE."""

RING_DTYPE: Final = np.dtype(">u4")
"""Serialised ring words: big-endian u32, as the user's hash stores them."""

LAYOUT_SPEC: Final = {
    "tick_ms": TICK_MS,
    "session_gap_ms": SESSION_GAP_MS,
    "waking_gap_max_ms": WAKING_GAP_MAX_MS,
    "short_session_ms": SHORT_SESSION_MS,
    "long_session_ms": LONG_SESSION_MS,
    "hour_slots": HOUR_SLOTS,
    "day_slots": DAY_SLOTS,
    "detail_slots": DETAIL_SLOTS,
    "log_scale": LOG_SCALE,
    "sq_unit_s2": SQ_UNIT_S2,
    "h_fields": list(H_FIELDS),
    "d_fields": list(D_FIELDS),
    "x_fields": list(X_FIELDS),
    "scalars": list(SCALARS),
    "categories": list(CATEGORIES),
}


def h_index(slot_bucket: int, field: int) -> int:
    return H_BASE + (slot_bucket % HOUR_SLOTS) * len(H_FIELDS) + field


def d_index(slot_bucket: int, field: int) -> int:
    return D_BASE + (slot_bucket % DAY_SLOTS) * len(D_FIELDS) + field


def x_index(slot_bucket: int, field: int) -> int:
    return X_BASE + (slot_bucket % DETAIL_SLOTS) * len(X_FIELDS) + field
