"""wellbeing-nudge: an example downstream service of riskstream.

It reads ``risk.alerts`` and sends a gentle "nudge" to a user for the alerts it handles:

* ``ml_risk`` ``elevated`` or ``high`` (the model sees a pattern of compulsive use),
* ``rule:curfew`` ``elevated`` (a minor is on the platform during the night).

Every other alert (``cleared``, the daily cap, continuous use) is read and skipped. Sending is
appending one JSON line to an outbox file (a stand-in for a push-notification API).

riskstream delivers alerts *at least once*: after a crash or a rebalance the same alert may arrive
again, always with the same ``alert_id``. This service sends each nudge *exactly once* anyway, also
when it is itself killed at any instant:

1. before sending, the alert id is recorded as ``pending`` in a SQLite database in the state
   directory (durable, committed);
2. the nudge is appended to the outbox (flushed and fsynced), carrying the alert id;
3. the alert id is marked ``sent``;
4. only then is the Kafka offset stored, and committed (manual commits, never automatic).

A crash before (1) or after (3) is covered by the database: the redelivered alert is found and not
sent again. A crash between (1) and (3) leaves a ``pending`` row; at start-up every pending id is
looked up in the outbox (the sink is asked whether it got that id: a real push API would be asked
with the alert id as its idempotency key) and sent only if it is not there. A line torn by a crash
in the middle of (2) is cut off first, so it counts as not sent.

Run it (confluent-kafka is the only dependency beyond the standard library)::

    python examples/wellbeing_nudge/nudge.py --bootstrap 127.0.0.1:9092 --state-dir /tmp/nudge

Exit status: 0 after SIGTERM/SIGINT (the offsets of what was sent are committed), 2 for a bad
option (one line on stderr), 1 when Kafka reports a fatal error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException

log = logging.getLogger("wellbeing-nudge")

# (kind, level) -> the text of the nudge
HANDLED = {
    ("ml_risk", "elevated"): "You have been spending a lot of time here lately. How about a short break?",
    ("ml_risk", "high"): "Your use has been very intense these past days. Want to set a daily reminder?",
    ("rule:curfew", "elevated"): "It is late. Time to put the phone away and get some sleep.",
}


# -- the durable record of what was sent ----------------------------------------------------------
class Ledger:
    """``alert_id -> pending | sent`` in SQLite (WAL, synchronous=FULL: a commit survives a crash)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)  # autocommit: one statement, one commit
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS nudges (alert_id TEXT PRIMARY KEY, "
                        "state TEXT NOT NULL CHECK (state IN ('pending', 'sent')), updated_at REAL NOT NULL)")

    def state(self, alert_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM nudges WHERE alert_id = ?", (alert_id,)).fetchone()
        return None if row is None else str(row[0])

    def pending(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT alert_id FROM nudges WHERE state = 'pending'")]

    def mark(self, alert_id: str, state: str) -> None:
        self.db.execute("INSERT INTO nudges (alert_id, state, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (alert_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                        (alert_id, state, time.time()))

    def close(self) -> None:
        self.db.close()


# -- the sink -------------------------------------------------------------------------------------
class Outbox:
    """The nudges sent, one JSON object a line (append-only, fsynced per nudge)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cut_torn_line()
        self.f = path.open("ab")

    def _cut_torn_line(self) -> None:
        """A crash in the middle of an append leaves a line without its newline: it was not sent."""
        if not self.path.exists():
            return
        with self.path.open("r+b") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                log.warning("outbox: cutting a torn last line (%d bytes)", len(data) - end)
                f.truncate(end)
                os.fsync(f.fileno())

    def contains(self, alert_id: str) -> bool:
        """Whether a nudge for this alert is in the outbox (used for pending ids at start-up only)."""
        needle = f'"alert_id":"{alert_id}"'.encode()
        with self.path.open("rb") as f:
            return any(needle in line for line in f)

    def send(self, nudge: dict[str, Any]) -> None:
        self.f.write(json.dumps(nudge, separators=(",", ":")).encode() + b"\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# -- the service ----------------------------------------------------------------------------------
class NudgeService:
    def __init__(self, ledger: Ledger, outbox: Outbox) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.sent = self.skipped = self.duplicates = 0

    def recover(self) -> None:
        """Settle the ids a crash left pending: marked sent if the outbox has them; otherwise
        forgotten, and the alert, whose offset was never committed, comes again and is sent then."""
        for alert_id in self.ledger.pending():
            if self.outbox.contains(alert_id):
                self.ledger.mark(alert_id, "sent")
                log.info("recovered %s: it was sent before the crash", alert_id)
            else:
                self.ledger.db.execute("DELETE FROM nudges WHERE alert_id = ?", (alert_id,))
                log.info("recovered %s: not sent; its redelivery will send it", alert_id)

    def handle(self, value: bytes | None) -> None:
        """Act on one alert record (idempotent: the same alert_id is never sent twice)."""
        try:
            alert = json.loads(value or b"")
            alert_id, user, kind, level = alert["alert_id"], alert["user_id"], alert["kind"], alert["level"]
        except (ValueError, TypeError, KeyError) as e:
            log.error("skipping a record that is not an alert v1 (%s): %r", e, (value or b"")[:200])
            self.skipped += 1
            return
        text = HANDLED.get((kind, level))
        if text is None:
            self.skipped += 1
            return
        state = self.ledger.state(alert_id)
        if state == "sent":
            self.duplicates += 1  # at-least-once delivery upstream, or our own redelivery
            return
        self.ledger.mark(alert_id, "pending")
        self.outbox.send({"alert_id": alert_id, "user_id": user, "kind": kind, "level": level,
                          "event_time": alert.get("event_time"), "text": text})
        self.ledger.mark(alert_id, "sent")
        self.sent += 1


def run(args: argparse.Namespace) -> int:
    args.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(args.state_dir / "nudges.sqlite")
    outbox = Outbox(args.state_dir / "outbox.jsonl")
    service = NudgeService(ledger, outbox)
    service.recover()
    topic = f"{args.namespace}.risk.alerts" if args.namespace else "risk.alerts"
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "enable.auto.commit": False,  # offsets are committed by hand, after acting
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # static membership: a restarted instance (same id) gets its partitions back at once
        # instead of after the dead one's session timeout (45 s)
        "group.instance.id": args.instance_id,
    })
    stopping = False

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # offsets stored before a partition moves to another member are committed first
    consumer.subscribe([topic], on_revoke=lambda c, _parts: _commit(c))
    log.info("consuming %s as group %s; state in %s", topic, args.group, args.state_dir)
    status = 0
    try:
        while not stopping:
            batch = consumer.consume(num_messages=200, timeout=0.5)
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("kafka: %s", err)  # e.g. a partition end or a transient broker error
                    continue
                service.handle(msg.value())
                consumer.store_offsets(message=msg)  # acted on: its offset may be committed
            if batch:
                _commit(consumer)
    except KafkaException as e:
        log.error("fatal Kafka error: %s", e)
        status = 1
    finally:
        if status == 0:
            _commit(consumer)
        consumer.close()
        ledger.close()
        outbox.close()
        log.info("stopped: %d sent, %d duplicates ignored, %d not handled", service.sent,
                 service.duplicates, service.skipped)
    return status


def _commit(consumer: Consumer) -> None:
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as e:
        if e.args[0].code() != KafkaError._NO_OFFSET:  # nothing stored since the last commit
            raise


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wellbeing-nudge", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", default=os.environ.get("NUDGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                   help="Kafka bootstrap servers [env NUDGE_KAFKA_BOOTSTRAP; 127.0.0.1:9092]")
    p.add_argument("--namespace", default=os.environ.get("NUDGE_NAMESPACE", ""),
                   help="riskstream namespace: reads NS.risk.alerts [env NUDGE_NAMESPACE; none]")
    p.add_argument("--group", default=os.environ.get("NUDGE_GROUP", "wellbeing-nudge"),
                   help="consumer group [env NUDGE_GROUP; wellbeing-nudge]")
    p.add_argument("--instance-id", default=os.environ.get("NUDGE_INSTANCE_ID", socket.gethostname()),
                   help="static group member id, stable across restarts [env NUDGE_INSTANCE_ID; the host name]")
    p.add_argument("--state-dir", type=Path, default=os.environ.get("NUDGE_STATE_DIR"),
                   help="where the ledger (nudges.sqlite) and the outbox (outbox.jsonl) live [env NUDGE_STATE_DIR]")
    p.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    if args.state_dir is None:
        p.exit(2, "wellbeing-nudge: --state-dir (or NUDGE_STATE_DIR) is required\n")
    args.state_dir = Path(args.state_dir)
    if args.state_dir.exists() and not args.state_dir.is_dir():
        p.exit(2, f"wellbeing-nudge: --state-dir {args.state_dir} is not a directory\n")
    for hp in args.bootstrap.split(","):
        host, _, port = hp.strip().rpartition(":")
        if not host or not port.isdigit():
            p.exit(2, f"wellbeing-nudge: --bootstrap expects host:port[,host:port...], got {args.bootstrap!r}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.loglevel, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
