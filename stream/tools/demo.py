"""The live demo behind ``make run``.

Brings the local stack up (if it is not running), creates the topics of a fresh namespace
(``demo-<hex>``: no state of an earlier run or of anything else is reused), starts a worker,
simulates a population (some users compulsive, some minors) and streams it into Kafka in
accelerated event time, and shows alerts as they arrive. Ctrl-C stops everything this script
started, deletes the namespace's topics and Redis keys, and stops the stack if it brought it up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]  # the checkout: the demo drives deploy/local/stack
STACK = ROOT / "deploy" / "local" / "stack"


def _say(msg: str) -> None:
    print(f"\033[1m[demo]\033[0m {msg}", file=sys.stderr, flush=True)


def _riskstream(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "stream", *args], cwd=ROOT, **kw)  # type: ignore[call-overload, no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=120)
    ap.add_argument("--days", type=int, default=9)
    ap.add_argument("--speed", type=float, default=8_000.0, help="event-time speed-up factor")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dashboard", default="127.0.0.1:8090", metavar="HOST:PORT",
                    help="where the monitoring page is served (loopback)")
    a = ap.parse_args()

    started_stack = subprocess.run([str(STACK), "status"], capture_output=True).returncode != 0
    if started_stack:
        _say("starting Kafka and Redis (deploy/local/stack up) …")
    if subprocess.run([str(STACK), "up"]).returncode != 0:
        _say("the local stack did not come up; see the lines above")
        return 1
    from stream.settings import load_settings
    from stream.tools.namespace import delete_namespace

    ns = f"demo-{uuid.uuid4().hex[:6]}"
    settings = load_settings(namespace=ns)
    topics_env = {**os.environ, "RISKSTREAM_INPUT_RETENTION_MS": str(30 * 86_400_000)}
    if subprocess.run([sys.executable, "-m", "stream", "topics", "create", "--namespace", ns], cwd=ROOT,
                      env=topics_env).returncode != 0:
        return 1
    work = Path(tempfile.mkdtemp(prefix="riskstream-demo-"))
    events, labels = work / "events.jsonl.gz", work / "labels.csv"
    _say(f"simulating {a.users} users × {a.days} days (seed {a.seed}) …")
    # Recent history (the simulated days end yesterday), and input topics that keep a month: Kafka's
    # time-based retention looks at event times and deletes older history within minutes.
    start = (datetime.now(timezone.utc).date() - timedelta(days=a.days + 1)).isoformat()
    sim = subprocess.run([sys.executable, "-m", "stream", "simulate", "--users", str(a.users), "--days",
                          str(a.days), "--seed", str(a.seed), "--start", start, "--out", str(events),
                          "--labels", str(labels)], cwd=ROOT)
    if sim.returncode != 0:
        return 1
    procs: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            delete_namespace(settings)
            _say(f"deleted the demo's topics and Redis keys (namespace {ns})")
        except Exception as e:  # noqa: BLE001 - the stack may be gone already
            _say(f"could not delete namespace {ns}: {e}")
        if started_stack:
            _say("stopping the stack this demo started …")
            subprocess.run([str(STACK), "down"])

    worker_http = "127.0.0.1:18080"
    env = {**os.environ, "RISKSTREAM_IDLE_MS": "1000", "RISKSTREAM_HTTP_ADDR": worker_http}
    try:
        _say("starting the worker (riskstream worker) …")
        procs.append(_riskstream("worker", "--namespace", ns, "--loglevel", "WARNING", env=env))
        procs.append(_riskstream("dashboard", "--namespace", ns, "--listen", a.dashboard, "--metrics", worker_http,
                                 stdout=subprocess.DEVNULL))
        _say(f"monitoring page: http://{a.dashboard}/ (riskstream dashboard)")

        def start_replay() -> None:
            _say(f"streaming the population at {a.speed:g}× event time (riskstream replay) …")
            _say("alerts as they arrive (riskstream alerts tail); Ctrl-C stops the demo\n")
            procs.append(_riskstream("replay", str(events), "--namespace", ns, "--sort", "--speed", str(a.speed),
                                     "--envelope", "20", "--no-progress"))

        # The tail subscribes at the end of risk.alerts first; the replay starts once it listens.
        threading.Timer(3.0, start_replay).start()
        from stream.tools.tail import tail

        tail(settings, lambda line: print(line, flush=True), from_beginning=False)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
