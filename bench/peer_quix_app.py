"""The peer's apps for bench/peer_bench.py: Quix Streams on riskstream's input topics.

    <peer venv>/bin/python bench/peer_quix_app.py noop|tumbling|sliding --bootstrap HOST:PORT
        --group GROUP --topics CLICKS VIEWS --state-dir DIR [--grace-ms MS]

Runs in the peer's own virtual environment (quixstreams is not a riskstream dependency), so it
imports nothing from this project. Written with Quix Streams' own API only:

- ``noop``: both topics as bytes, no transformation (its consumer loop, deserialisation of nothing);
- ``tumbling``: JSON values, a batch envelope expanded into its events, event time from each
  event's ``ts``, per user a 1-minute tumbling window of count and sum of ``dwell_ms``, final
  results; durable state (RocksDB in ``--state-dir`` plus Quix's changelog topics);
- ``sliding``: the same with a 1-hour sliding window, current results.

Both topics are concatenated into one dataframe, so one window holds a user's clicks and views (as
riskstream's per-user windows do). ``--grace-ms`` is the windows' lateness allowance, set by the
bench above the SDK-upload window as the riskstream worker's lateness bound is. Results go nowhere
(no sink): the measured work is consuming, deserialising, expanding, windowing and the state's
durability, and the commits.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Sum


LATE = [0]


def _late(*_args: object) -> bool:
    """Count events a window refused as late (instead of one log line each); see --late-file."""
    LATE[0] += 1
    return False


def _events(value: dict) -> list[dict]:
    return value["events"] if "events" in value else [value]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["noop", "tumbling", "sliding"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topics", nargs=2, required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--grace-ms", type=int, default=0)
    ap.add_argument("--commit-interval", type=float, default=0.5)
    ap.add_argument("--late-file", help="write the number of events dropped as late here on exit")
    a = ap.parse_args()
    app = Application(broker_address=a.bootstrap, consumer_group=a.group, auto_offset_reset="earliest",
                      commit_interval=a.commit_interval, state_dir=a.state_dir, loglevel="WARNING",
                      use_changelog_topics=True)
    if a.kind == "noop":
        sdfs = [app.dataframe(app.topic(t, value_deserializer="bytes", key_deserializer="bytes")) for t in a.topics]
        sdf = sdfs[0].concat(sdfs[1])
    else:
        clicks, views = (app.dataframe(app.topic(t, value_deserializer="json", key_deserializer="str"))
                         for t in a.topics)
        sdf = clicks.concat(views)
        sdf = sdf.apply(_events, expand=True)
        sdf = sdf.set_timestamp(lambda value, key, ts, headers: value["ts"])
        sdf = sdf.apply(lambda e: e.get("dwell_ms", 0))
        if a.kind == "tumbling":
            sdf = sdf.tumbling_window(timedelta(minutes=1), grace_ms=a.grace_ms, on_late=_late).agg(
                count=Count(), dwell_ms=Sum()).final()
        else:
            sdf = sdf.sliding_window(timedelta(hours=1), grace_ms=a.grace_ms, on_late=_late).agg(
                count=Count(), dwell_ms=Sum()).current()
    del sdf  # registered with the app by app.dataframe(); run() runs every registered dataframe
    try:
        app.run()  # until SIGTERM (the bench stops it once its group has committed the input)
    finally:
        if a.late_file:
            with open(a.late_file, "w") as f:
                f.write(str(LATE[0]))


if __name__ == "__main__":
    main()
