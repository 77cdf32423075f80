"""Regenerate the golden event log (run once, on purpose): python -m tests.golden.make_golden"""

from __future__ import annotations

from pathlib import Path

from stream.core.events import encode_event
from tests.eventgen import at, ev
from tests.scenarios import random_log

HERE = Path(__file__).resolve().parent


def events() -> list:
    out = random_log(21, users=5, hours=5)
    # a 13-15-year-old at 23:30 local (UTC+1): curfew
    out += [ev("minor-night", at(3, 22, 30, s), "view", dwell_ms=8_000, tz=60, age_band="13-15", event_id=f"mn{s}")
            for s in range(0, 600, 20)]
    # an older teen in one 75-minute session: continuous use (60 min)
    out += [ev("teen-binge", at(3, 15, 0) + k * 45_000, "view", dwell_ms=45_000, tz=0, age_band="16-17",
               category="short_video", event_id=f"tb{k}") for k in range(100)]
    # an adult at night: no time rules
    out += [ev("adult-night", at(3, 23, 30, s), "click", tz=0, age_band="adult", event_id=f"an{s}")
            for s in range(0, 600, 30)]
    return out


def main() -> None:
    evs = events()
    lines = [encode_event(e) for e in evs]
    lines += [b'{"not json', b'{"v":1,"event_id":"x","user_id":"u","ts":"yesterday","type":"click"}']
    (HERE / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    main()
