"""examples/wellbeing_nudge on the real broker: every nudge it should send is sent exactly once,
also when it is SIGKILLed mid-stream (twice) and restarted, and with alerts delivered twice upstream.

The alerts are contract-v1 records (stream.core.alerts) for many users and every kind and level;
about a tenth are published a second time, as riskstream's at-least-once delivery may. The expected
nudges are computed here from what was published (the handled kinds and levels), not read from the
example.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.core.alerts import Alert, alert_id, alert_to_json
from tests.contracts import assert_valid_alert

ROOT = Path(__file__).resolve().parents[2]
NUDGE = ROOT / "examples" / "wellbeing_nudge" / "nudge.py"
HANDLED = {("ml_risk", "elevated"), ("ml_risk", "high"), ("rule:curfew", "elevated")}
ALL = [("ml_risk", "elevated"), ("ml_risk", "high"), ("ml_risk", "cleared"), ("rule:curfew", "elevated"),
       ("rule:curfew", "cleared"), ("rule:daily_cap", "high"), ("rule:continuous_use", "elevated")]
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z


def publish_alerts(settings, n: int, seed: int) -> set[str]:
    """Publish n alerts (and a tenth of them again); return the ids that must be nudged."""
    rng = random.Random(seed)
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 20})
    want: set[str] = set()
    sent: list[tuple[bytes, bytes]] = []
    for i in range(n):
        user = f"user-{rng.randrange(400)}"
        kind, level = rng.choice(ALL)
        tick = T0 + i * 60_000
        a = Alert(alert_id=alert_id(user, kind, level, tick), user_id=user, kind=kind, level=level,
                  score=round(rng.random(), 6) if kind == "ml_risk" else None,
                  model_version="test" if kind == "ml_risk" else None, event_time_ms=tick, emitted_at_ms=tick)
        value = alert_to_json(a)
        assert_valid_alert(value)
        sent.append((user.encode(), value))
        if (kind, level) in HANDLED:
            want.add(a.alert_id)
    sent += rng.sample(sent, n // 10)  # redelivered upstream: the same records again, later
    for key, value in sent:
        p.produce(settings.alerts_topic, key=key, value=value)
        p.poll(0)
    assert p.flush(30) == 0
    return want


def start(settings, state: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(NUDGE), "--bootstrap", settings.kafka_bootstrap, "--namespace", settings.namespace,
         "--group", f"{settings.namespace}-nudge", "--instance-id", "nudge-1", "--state-dir", str(state), "--loglevel", "WARNING"],
        cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def outbox_lines(state: Path) -> int:
    path = state / "outbox.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def outbox_ids(state: Path) -> list[str]:
    path = state / "outbox.jsonl"
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    return [json.loads(line)["alert_id"] for line in lines[:-1]]  # a torn last line is not a nudge


def committed(settings) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.namespace}-nudge"})
    try:
        parts = c.list_topics(settings.alerts_topic, timeout=10).topics[settings.alerts_topic].partitions
        tps = [TopicPartition(settings.alerts_topic, p) for p in parts]
        done = sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
        end = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return done, end
    finally:
        c.close()


def all_committed(settings) -> bool:
    done, end = committed(settings)
    return done == end


def wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the consumer exited {proc.returncode}:\n{proc.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_every_nudge_exactly_once_across_sigkills(settings, tmp_path):
    want = publish_alerts(settings, 6000, seed=7)
    assert len(want) > 2000
    state = tmp_path / "nudge"
    proc = start(settings, state)
    kills = 0
    try:
        for fraction in (0.25, 0.6):  # kill it twice while it works through the backlog
            wait_for(lambda f=fraction: outbox_lines(state) >= f * len(want), proc, "no progress")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            done, end = committed(settings)
            assert done < end and len(set(outbox_ids(state))) < len(want), "the kill must happen mid-stream"
            kills += 1
            proc = start(settings, state)
        wait_for(lambda: all_committed(settings), proc, "offsets not all committed")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert kills == 2
    ids = outbox_ids(state)
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} nudges sent twice"
    assert set(ids) == want, f"missing {len(want - set(ids))}, unexpected {len(set(ids) - want)}"
    db = sqlite3.connect(state / "nudges.sqlite")
    assert dict(db.execute("SELECT state, count(*) FROM nudges GROUP BY state").fetchall()) == {"sent": len(want)}
    db.close()


def test_a_crash_between_sending_and_recording_neither_repeats_nor_loses_the_nudge(settings, tmp_path):
    """The windows a SIGKILL may hit at random, made deterministic: one id pending and in the outbox
    (sent, not yet marked), one pending and not in it (crashed before the append), and a torn line."""
    want = sorted(publish_alerts(settings, 60, seed=11))
    state = tmp_path / "nudge"
    state.mkdir()
    sent_before, not_sent, torn = want[0], want[1], want[2]
    db = sqlite3.connect(state / "nudges.sqlite")
    db.execute("CREATE TABLE nudges (alert_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL)")
    db.executemany("INSERT INTO nudges VALUES (?, 'pending', 0)", [(sent_before,), (not_sent,), (torn,)])
    db.commit()
    db.close()
    (state / "outbox.jsonl").write_bytes(
        json.dumps({"alert_id": sent_before, "text": "sent before the crash"}, separators=(",", ":")).encode()
        + b"\n" + b'{"alert_id":"' + torn.encode() + b'","te')  # the crash cut this append short
    proc = start(settings, state)
    try:
        wait_for(lambda: all_committed(settings), proc, "offsets not all committed")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-3000:]
    ids = outbox_ids(state)
    assert sorted(ids) == want and ids[0] == sent_before, "each once; the one sent before the crash not again"
    assert (state / "outbox.jsonl").read_bytes().endswith(b"\n")


def test_a_bad_option_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(NUDGE), "--bootstrap", "nowhere", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--bootstrap" in r.stderr
    r = subprocess.run([sys.executable, str(NUDGE)], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "NUDGE_STATE_DIR"})
    assert r.returncode == 2 and "--state-dir" in r.stderr
