"""The pure helpers of bench/peer_bench.py and bench/profile_pipeline.py (the benchmarks themselves
are scripts that print figures; these pin that the figures mean what they say)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson

from bench.peer_bench import _keys, choose_window, make_log, upload_sizes, write_uploads
from bench.profile_pipeline import top_functions
from stream.core.events import Event, encode_event
from stream.tools.replay import ReplaySummary, _groups


def _log(path: Path) -> list[tuple[int, str, str, bytes]]:
    t0 = 1_735_689_600_000
    events = []
    for i in range(300):
        user = f"u{i % 4}"
        typ = "view" if i % 3 else "click"
        events.append(Event(user_id=user, ts_ms=t0 + i * 7_000 + (i % 4) * 500, type=typ, event_id=f"e{i}",
                            category="news", dwell_ms=5_000 if typ == "view" else 0, tz_offset_min=0,
                            age_band="adult", item_id=None, session_id=None))
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(encode_event(e) for e in events) + b"\n")
    return _keys(path)


def test_upload_sizes_predicts_what_replay_packs(tmp_path: Path) -> None:
    keys = _log(tmp_path / "log.jsonl.gz")
    for window_ms, cap in ((60_000, 100), (600_000, 100), (600_000, 5)):
        dst = tmp_path / f"up{window_ms}_{cap}.jsonl.gz"
        write_uploads(keys, dst, window_ms)
        with gzip.open(dst, "rb") as f:
            lines = [line for line in f.read().splitlines() if line]
        summary = ReplaySummary()
        messages = list(_groups(iter(lines), summary, cap, {"click", "view"}))
        assert summary.events == len(keys) == 300
        assert len(keys) / len(messages) == upload_sizes(keys, window_ms, cap)
        # each message holds one user's events of one type within one window
        for _, _, _, value in messages:
            obj = orjson.loads(value)
            evs = obj["events"] if "events" in obj else [obj]
            assert len({(e["user_id"], e["type"], e["ts"] // window_ms) for e in evs}) == 1
            assert len(evs) <= cap


def test_choose_window_takes_the_closest_mean(tmp_path: Path) -> None:
    keys = _log(tmp_path / "log.jsonl.gz")
    window_ms, mean = choose_window(keys, 8, 100)
    assert mean == upload_sizes(keys, window_ms, 100)
    from bench.peer_bench import WINDOWS_S
    assert all(abs(upload_sizes(keys, w * 1000, 100) - 8) >= abs(mean - 8) for w in WINDOWS_S)


def test_make_log_rescales_event_times(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    make_log(path, 2_000, 10, 1.5)
    keys = _keys(path)
    ts = [k[0] for k in keys]
    assert len(keys) == 2_000
    assert abs((max(ts) - min(ts)) - 1.5 * 86_400_000) <= 1
    assert ts == sorted(ts)  # still in (rough) time order: rescaling is monotone


def test_top_functions_counts_inclusive_once_and_own_at_the_leaf(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        "process 1;main (/x/stream/live/link.py:10);step (/x/stream/live/pipeline.py:5);"
        "decode (/x/stream/core/events.py:3) 6\n"
        "process 1;main (/x/stream/live/link.py:10);step (/x/stream/live/pipeline.py:5);"
        "step (/x/stream/live/pipeline.py:5) 3\n"
        "process 1;main (/x/stream/live/link.py:10) 1\n")
    total, incl, own = top_functions(raw, 10)
    assert total == 10
    assert dict(incl) == {"main (stream/live/link.py)": 10, "step (stream/live/pipeline.py)": 9,
                          "decode (stream/core/events.py)": 6}
    assert dict(own) == {"decode (stream/core/events.py)": 6, "step (stream/live/pipeline.py)": 3,
                         "main (stream/live/link.py)": 1}
