"""Live = offline on the real stack (docs/semantics.md §10): replay → Kafka → worker → Redis → risk.alerts.

(a) the alerts the worker publishes for a replayed log have exactly the ids `riskstream score`
gives offline — with small and large micro-batches, and with all views published before all
clicks; (b) a worker killed with SIGKILL mid-stream and restarted ends with the same Redis window
state and the same alert set as the offline run (duplicates only with identical ids).
"""

from __future__ import annotations

import dataclasses

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import SecretStr
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.core.events import Event, encode_event
from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH
from stream.core.policy import load_policy_config
from stream.core.scoring import OnnxScorer
from stream.offline import build_detector, decode_log, run_detector, Summary
from stream.state import RedisWindowStore, delete_keys, redis_client
from tests.contracts import assert_valid_alert
from tests.model_factory import build_model
from tests.battery.generator import battery_events
from tests.scenarios import random_log

ROOT = Path(__file__).resolve().parents[2]

POLICY = """
[ml]
persistence_s = 300
cooldown_s = 1800
min_history_days = 0
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("parity")
    log = d / "events.jsonl"
    events = []
    for seed in (31, 32, 33):
        events += random_log(seed, users=6, hours=4)
    events.sort(key=lambda e: e.ts_ms)
    # mild disorder inside the lateness bound, as producers have
    for i in range(0, len(events) - 1, 7):
        if events[i + 1].ts_ms - events[i].ts_ms < 60_000:
            events[i], events[i + 1] = events[i + 1], events[i]
    log.write_bytes(b"\n".join(encode_event(e) for e in events) + b"\n")
    model = d / "model.onnx"
    build_model(str(model), n_features=len(FEATURE_NAMES), feature_names=list(FEATURE_NAMES),
                spec_hash=FEATURE_SPEC_HASH, kind="logreg", seed=3,
                thresholds={"elevated_enter": 0.5, "elevated_exit": 0.4, "high_enter": 0.75, "high_exit": 0.65})
    policy = d / "policy.toml"
    policy.write_text(POLICY)
    return {"log": log, "model": model, "policy": policy}


def offline(art: dict[str, Path]):
    scorer = OnnxScorer(art["model"], expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    det, store = build_detector(load_policy_config(art["policy"]), scorer)
    alerts: list = []
    summary = Summary()
    run_detector(decode_log(art["log"], summary), det, alerts.append, summary)
    return alerts, store


def start_worker(settings, art, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stream", "worker", "--namespace", settings.namespace,
         "--model", str(art["model"]), "--policy-config", str(art["policy"]),
         "--loglevel", "WARNING", *(extra if "--idle-ms" in extra else ("--idle-ms", "500", *extra))],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> bytes:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or b""


def replay(settings, art, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "stream", "replay", str(art["log"]), "--namespace",
                        settings.namespace, "--no-progress", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def published_alerts(settings, want: set[str], proc: subprocess.Popen, timeout: float = 180) -> list[dict]:
    """Consume risk.alerts until every wanted id arrived and nothing new came for a few seconds."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.namespace}-check",
                  "enable.auto.commit": False})
    md = c.list_topics(settings.alerts_topic, timeout=10)
    c.assign([TopicPartition(settings.alerts_topic, p, 0) for p in md.topics[settings.alerts_topic].partitions])
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(assert_valid_alert(m.value()))
                quiet_since = time.monotonic()
                continue
            if want <= {a["alert_id"] for a in got} and time.monotonic() - quiet_since > 4:
                break
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{stop(proc).decode()[-4000:]}")
    finally:
        c.close()
    return got


def wait_drained(settings, timeout: float = 180) -> None:
    """Everything committed: every event applied, its tick decided, its alerts acknowledged."""
    deadline = time.monotonic() + timeout
    while True:
        done, end = _committed(settings, settings.group_id)
        if done == end:
            return
        assert time.monotonic() < deadline, f"the worker committed {done} of {end} offsets"
        time.sleep(0.2)


def assert_same_state(settings, mem) -> None:
    client = redis_client(settings)
    store = RedisWindowStore(client, key_prefix=settings.key_prefix, ttl_s=settings.state_ttl_s,
                             key_secret=settings.key_secret)
    users = sorted(mem.users())
    assert users
    for u in users:
        assert store.state_of(u) == mem.state_of(u), f"window state of {u} differs from the offline run"
    client.close()


def assert_same_alerts(got: list[dict], want: set[str]) -> None:
    """The offline alert ids, all of them; a duplicate (after a crash or a rebalance) only as the same alert."""
    assert {a["alert_id"] for a in got} == want
    by_id: dict[str, dict] = {}
    for a in got:
        a = {k: v for k, v in a.items() if k != "emitted_at"}
        assert by_id.setdefault(a["alert_id"], a) == a


def check_parity(settings, art, *, worker_args: tuple[str, ...] = (), replay_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None,
                 backlog: bool = True):
    """backlog=True: the log is published, then a worker drains it (docs/semantics.md §10: any skew while a
    backlog drains). backlog=False: the worker runs first and the log streams in; its inputs are
    never idle for idle_ms meanwhile, so nothing is late either."""
    expected, mem = offline(art)
    want = {a.alert_id for a in expected}
    assert len(want) >= 5, "the scenario should produce alerts"
    if backlog:
        replay(settings, art, *replay_args)
    proc = start_worker(settings, art, *worker_args, env=env)
    try:
        if not backlog:
            time.sleep(2)
            replay(settings, art, *replay_args)
        got = published_alerts(settings, want, proc)
        wait_drained(settings)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, f"SIGTERM must stop the worker cleanly:\n{out.decode()[-3000:]}"
    ids = [a["alert_id"] for a in got]
    assert set(ids) == want, f"missing {len(want - set(ids))}, extra {len(set(ids) - want)}\n{out.decode()[-3000:]}"
    assert len(ids) == len(set(ids)), "no crash here: every alert exactly once"
    assert_same_state(settings, mem)
    return got


def test_log_streamed_into_a_running_worker_gives_the_offline_alerts(settings, artifacts):
    got = check_parity(settings, artifacts, worker_args=("--batch-size", "5000", "--idle-ms", "5000"),
                       backlog=False)
    a = got[0]
    assert a["emitted_at"] is not None and a["features"] and "alert_id" in a


def test_replayed_log_gives_the_offline_alerts_small_batches_and_envelopes(settings, artifacts):
    check_parity(settings, artifacts, worker_args=("--batch-size", "7"), replay_args=("--envelope", "5"))


CLUSTER_REDIS = {"RISKSTREAM_REDIS_URL": "redis://127.0.0.1:7001/0", "RISKSTREAM_REDIS_CLUSTER": "true"}


def test_replayed_log_gives_the_offline_alerts_with_redis_cluster_as_the_store(settings, artifacts, cluster_stack):
    on_cluster = settings.model_copy(update={"redis_url": SecretStr(CLUSTER_REDIS["RISKSTREAM_REDIS_URL"]),
                                              "redis_cluster": True})
    try:
        check_parity(on_cluster, artifacts, worker_args=("--batch-size", "50"), env=CLUSTER_REDIS)
    finally:
        client = redis_client(on_cluster)
        delete_keys(client, f"{settings.namespace}:")
        client.close()


def test_pseudonymised_keys_give_the_offline_alerts_and_name_no_user(settings, artifacts):
    secret = "parity-test-secret-0123456789"
    with_secret = settings.model_copy(update={"state_key_secret": SecretStr(secret)})
    check_parity(with_secret, artifacts, worker_args=("--batch-size", "50"),
                 env={"RISKSTREAM_STATE_KEY_SECRET": secret})
    _, mem = offline(artifacts)
    client = redis_client(settings)
    keys = [k.decode() for k in client.scan_iter(match=f"{settings.namespace}:*", count=1000)]
    client.close()
    assert len(keys) >= len(list(mem.users()))
    assert not [k for k in keys for u in mem.users() if u in k], "a Redis key names a user id"


def test_views_published_before_clicks_give_the_offline_alerts_pipeline_in_a_thread(settings, artifacts):
    check_parity(settings, artifacts, worker_args=("--batch-size", "500"), replay_args=("--skew", "views-first"),
                 env={"RISKSTREAM_DETECTOR_PROCESS": "false"})


DAY_MEAN_POLICY = """
[ml]
evidence = "day_mean"
evidence_days = 2
cooldown_s = 0
min_history_days = 0
elevated_enter = 0.3
elevated_exit = 0.2
high_enter = 0.5
high_exit = 0.45
"""


@pytest.fixture(scope="module")
def day_mean_artifacts(artifacts, tmp_path_factory) -> dict[str, Path]:
    """An evening of use on each of five days by the same users, decided on day-mean evidence:
    the day-end series lives in the policy state in Redis across batches and days."""
    d = tmp_path_factory.mktemp("parity_day_mean")
    base = random_log(41, users=5, hours=1.0)
    events = [dataclasses.replace(e, ts_ms=e.ts_ms + day * 86_400_000, event_id=f"{e.event_id}-d{day}")
              for day in range(5) for e in base]
    events.sort(key=lambda e: e.ts_ms)
    log = d / "events.jsonl"
    log.write_bytes(b"\n".join(encode_event(e) for e in events) + b"\n")
    policy = d / "policy.toml"
    policy.write_text(DAY_MEAN_POLICY)
    return {"log": log, "model": artifacts["model"], "policy": policy}


def test_day_mean_evidence_gives_the_offline_alerts(settings, day_mean_artifacts):
    alerts, _ = offline(day_mean_artifacts)
    ml = [a for a in alerts if a.kind == "ml_risk"]
    assert ml and all(a.details["evidence"] == "day_mean" for a in ml), "the scenario should decide on day means"
    got = check_parity(settings, day_mean_artifacts, worker_args=("--batch-size", "50"))
    assert {a["alert_id"] for a in got if a["kind"] == "ml_risk"} == {a.alert_id for a in ml}


BATTERY_COMPULSIVE = ("checker", "night_binger")
BATTERY_HEALTHY = ("heavy_longform", "typical")


@pytest.fixture(scope="module")
def battery_artifacts(tmp_path_factory) -> dict[str, Path]:
    """Hand-built users of the face-validity battery (tests/battery), 14 days, with the shipped
    model and the packaged policy: what a new user would try first."""
    d = tmp_path_factory.mktemp("parity_battery")
    events = battery_events(2, 14, seed=5, archetypes=BATTERY_COMPULSIVE + BATTERY_HEALTHY + ("teen_evening",))
    events.sort(key=lambda e: e.ts_ms)  # the generator writes user after user; a platform emits in time order
    log = d / "events.jsonl"
    log.write_bytes(b"\n".join(encode_event(e) for e in events) + b"\n")
    return {"log": log, "model": ROOT / "models" / "riskstream.onnx",
            "policy": ROOT / "stream" / "config" / "policy.toml"}


def test_battery_users_through_a_live_worker_give_the_offline_alerts(settings, battery_artifacts):
    got = check_parity(settings, battery_artifacts, worker_args=("--batch-size", "2000"))
    ml = {a["user_id"] for a in got if a["kind"] == "ml_risk" and a["level"] in ("elevated", "high")}
    compulsive = {a["user_id"] for a in got if a["user_id"].rsplit("-", 1)[0] in BATTERY_COMPULSIVE}
    assert len(compulsive) == 2 * len(BATTERY_COMPULSIVE) and compulsive <= ml
    assert not {u for u in ml if u.rsplit("-", 1)[0] in BATTERY_HEALTHY}
    assert {a["user_id"].rsplit("-", 1)[0] for a in got if a["kind"] == "rule:curfew"} == {"teen_evening"}
    assert len({a["user_id"] for a in got if a["kind"] == "rule:curfew"}) == 2


def _committed(settings, group: str) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(t, p) for t in (settings.clicks_topic, settings.views_topic) for p in range(3)]
        done = sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
        end = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return done, end
    finally:
        c.close()


def sigkill_mid_stream(settings, proc: subprocess.Popen) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the worker once a quarter, but not all, of the input offsets are committed."""
    deadline = time.monotonic() + 120
    while True:
        done, end = _committed(settings, settings.group_id)
        if done >= end // 4:
            break
        assert time.monotonic() < deadline, "the worker committed nothing"
        time.sleep(0.005)
    assert done < end, "the kill must happen mid-stream"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_stream_and_restart_gives_the_same_state_and_alerts(settings, artifacts):
    """The log is published first (a backlog, as after an outage); the worker is killed while it
    drains it, once some but not all offsets are committed, then restarted."""
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    replay(settings, artifacts)
    # small batches, committed often: the whole backlog takes the worker about a second
    # (and state checkpoints: offsets move in steps of the checkpoint interval, 1 s by default)
    fast_commits = {"RISKSTREAM_COMMIT_INTERVAL_S": "0.02", "RISKSTREAM_CHECKPOINT_MS": "20"}
    proc = start_worker(settings, artifacts, "--batch-size", "10", env=fast_commits)
    try:
        sigkill_mid_stream(settings, proc)
        proc = start_worker(settings, artifacts, "--batch-size", "10")
        got = published_alerts(settings, want, proc)
        wait_drained(settings)
    finally:
        stop(proc)
    assert_same_alerts(got, want)
    assert_same_state(settings, mem)


def _metric(port: int, sample: str) -> float:
    """The sum of a worker's metric samples that start with ``sample`` (name and labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample))


def _metric_or_zero(port: int, sample: str) -> float:
    try:
        return _metric(port, sample)
    except OSError:  # not serving metrics yet
        return 0.0


def _messages_consumed(port: int) -> float:
    return _metric(port, "riskstream_messages_total ")


def _consumed_or_zero(port: int) -> float:
    return _metric_or_zero(port, "riskstream_messages_total ")


def _events_total(outcome: str) -> str:
    return f'riskstream_events_total{{outcome="{outcome}"}}'


def test_a_second_worker_joining_mid_stream_gives_the_same_alerts_and_state(settings, artifacts):
    """Scale-out: a second worker joins the group while the log streams in (≈ 12 s at 150 messages/s),
    the partitions are rebalanced, and un-acked (applied or buffered) events move to the new owner.
    The result is the offline one (duplicates only as the same alert)."""
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    args = ("--batch-size", "50", "--idle-ms", "5000")
    a = start_worker(settings, artifacts, *args, "--metrics-port", "19471")
    b = None
    try:
        time.sleep(4)  # A has joined and owns every partition
        pub = subprocess.Popen([sys.executable, "-m", "stream", "replay", str(artifacts["log"]), "--namespace",
                                settings.namespace, "--rate", "150", "--no-progress"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        b = start_worker(settings, artifacts, *args, "--metrics-port", "19472")
        assert pub.wait(timeout=60) == 0
        got = published_alerts(settings, want, a)
        wait_drained(settings)
        assert b.poll() is None
        consumed = _messages_consumed(19471), _messages_consumed(19472)
    finally:
        outs = stop(a), (stop(b) if b is not None else b"")
    assert (a.returncode, b.returncode) == (0, 0), outs[0].decode()[-2000:] + outs[1].decode()[-2000:]
    assert all(n > 0 for n in consumed), f"both workers must have consumed (messages: {consumed})"
    assert_same_alerts(got, want)
    assert_same_state(settings, mem)


def test_two_workers_one_sigkilled_mid_stream_the_survivor_takes_over(settings, artifacts):
    """Two workers share the partitions while the log streams in; one is SIGKILLed mid-stream. The
    survivor takes its partitions over after the session timeout and redelivery: nothing is lost,
    and the alerts and the window state are the offline ones (duplicates only as the same alert)."""
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    args = ("--batch-size", "50", "--idle-ms", "5000")
    a = start_worker(settings, artifacts, *args, "--metrics-port", "19473")
    b = start_worker(settings, artifacts, *args, "--metrics-port", "19474")
    try:
        time.sleep(6)  # both joined; the partitions are split between them
        pub = subprocess.Popen([sys.executable, "-m", "stream", "replay", str(artifacts["log"]), "--namespace",
                                settings.namespace, "--rate", "150", "--no-progress"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _consumed_or_zero(19474) == 0:  # B is up, owns partitions and works on them
            assert time.monotonic() < deadline, "the second worker never consumed"
            time.sleep(0.2)
        b.send_signal(signal.SIGKILL)
        b.wait(timeout=30)
        assert pub.wait(timeout=90) == 0
        got = published_alerts(settings, want, a, timeout=240)
        wait_drained(settings, timeout=180)
    finally:
        out = stop(a)
        stop(b)
    assert a.returncode == 0, out.decode()[-3000:]
    assert_same_alerts(got, want)
    assert_same_state(settings, mem)


def _durable_redis(port: int, data: Path) -> subprocess.Popen:
    """A private redis-server with the stack's persistence (AOF, appendfsync always) in ``data``."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from stream.settings import load_settings

    client = redis_client(load_settings(redis_url=f"redis://127.0.0.1:{port}/0"))
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except Exception:  # noqa: BLE001 - starting, or loading its AOF
            assert proc.poll() is None and time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.1)


def test_redis_sigkilled_mid_stream_and_restarted_from_its_aof_loses_nothing(settings, artifacts, tmp_path):
    """Redis dies mid-stream (SIGKILL) and comes back from its append-only file. Redis appends a
    write to the AOF before it answers it, so no write the worker saw acknowledged is lost with the
    process (with appendfsync always it is also on disk before the answer, which a host crash needs),
    and the offsets the worker committed never run ahead of the state: the alerts and the window
    state equal the offline run. The worker rides the outage out, or exits 75 and is restarted, as a
    supervisor would."""
    port = 16395
    url = f"redis://127.0.0.1:{port}/0"
    on_own = settings.model_copy(update={"redis_url": SecretStr(url)})
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    rs = _durable_redis(port, tmp_path)
    replay(settings, artifacts)
    env = {"RISKSTREAM_REDIS_URL": url, "RISKSTREAM_COMMIT_INTERVAL_S": "0.05",
           "RISKSTREAM_CHECKPOINT_MS": "50"}  # offsets move in steps of it: a kill mid-stream
    proc = start_worker(settings, artifacts, "--batch-size", "10", env=env)
    restarts = 0
    try:
        deadline = time.monotonic() + 120
        while True:
            done, end = _committed(settings, settings.group_id)
            if done >= end // 3:
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the worker committed nothing"
            time.sleep(0.01)
        assert done < end, "the kill must happen mid-stream"
        rs.send_signal(signal.SIGKILL)
        rs.wait(timeout=30)
        time.sleep(1.0)
        rs = _durable_redis(port, tmp_path)
        deadline = time.monotonic() + 180
        while _committed(settings, settings.group_id)[0] < end:
            if proc.poll() is not None:
                assert proc.returncode == 75, stop(proc).decode()[-3000:]
                restarts += 1
                assert restarts <= 3, "the worker keeps exiting"
                proc = start_worker(settings, artifacts, "--batch-size", "10", env=env)
            assert time.monotonic() < deadline, "the worker did not drain the log after Redis came back"
            time.sleep(0.2)
        got = published_alerts(settings, want, proc)
    finally:
        stop(proc)
    try:
        assert_same_alerts(got, want)
        assert_same_state(on_own, mem)
    finally:
        rs.terminate()
        rs.wait(10)


def _acked_but_not_in_redis(settings) -> list[tuple[str, int, int]]:
    """Input messages below their partition's committed offset (acked) whose event the stored window
    state of their user does not hold (per the user's offset fence: below its frontier or listed)."""
    from stream.live.protocol import TopicPartition as Tp
    from stream.live.protocol import encode_position
    from stream.state.codec import _F_STATE, unpack_state

    client = redis_client(settings)
    store = RedisWindowStore(client, key_prefix=settings.key_prefix, ttl_s=settings.state_ttl_s,
                             key_secret=settings.key_secret)
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.group_id,
                  "enable.auto.commit": False})
    missing: list[tuple[str, int, int]] = []
    fences: dict[str, dict[str, tuple[int, set[int]]]] = {}
    try:
        tps = [TopicPartition(t, p) for t in (settings.clicks_topic, settings.views_topic) for p in range(3)]
        committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in c.committed(tps, timeout=10)}
        reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.namespace}-fence",
                           "enable.auto.commit": False})
        try:
            for (topic, p), upto in committed.items():
                if not upto:
                    continue
                reader.assign([TopicPartition(topic, p, 0)])
                seen = 0
                while seen < upto:
                    m = reader.poll(5)
                    assert m is not None and not m.error(), "could not read back the input"
                    seen += 1
                    if m.offset() >= upto:
                        break
                    user = m.key().decode()
                    if user not in fences:
                        blob = client.hget(store.key_of(user), _F_STATE)
                        fences[user] = {} if blob is None else unpack_state(blob)[2]
                    frontier, above = fences[user].get(Tp(topic, p).fence_key, (0, set()))
                    pos = encode_position(m.offset())
                    if not (pos < frontier or pos in above):
                        missing.append((topic, p, m.offset()))
        finally:
            reader.close()
    finally:
        c.close()
        client.close()
    return missing


def test_sigkill_between_checkpoints_acks_nothing_unwritten_and_restart_gives_parity(settings, artifacts, tmp_path):
    """Checkpoints every 5 s: the first half of the log is drained and checkpointed (acked), the
    second half is processed but not checkpointed when the worker and its pipeline process are
    SIGKILLed. No acked message is missing from the Redis state, and a restart (default interval)
    re-applies the rest from the checkpoint: the offline alerts and state."""
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    lines = artifacts["log"].read_bytes().splitlines(keepends=True)
    halves = []
    for i, part in enumerate((lines[:len(lines) // 2], lines[len(lines) // 2:])):
        halves.append({**artifacts, "log": tmp_path / f"half{i}.jsonl"})
        halves[-1]["log"].write_bytes(b"".join(part))
    replay(settings, halves[0])
    # never idle (no event late across the halves); acks at checkpoints only
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker", "--namespace", settings.namespace,
         "--model", str(artifacts["model"]), "--policy-config", str(artifacts["policy"]),
         "--loglevel", "WARNING", "--idle-ms", "600000", "--batch-size", "10"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "RISKSTREAM_CHECKPOINT_MS": "5000",
                       "RISKSTREAM_COMMIT_INTERVAL_S": "0.05"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _committed(settings, settings.group_id)[0] == 0:  # the first checkpoint, ≈ 5 s in
            assert proc.poll() is None, stop(proc).decode()[-3000:]
            assert time.monotonic() < deadline, "nothing committed"
            time.sleep(0.05)
        replay(settings, halves[1])
        time.sleep(1.5)  # processed, well before the next checkpoint
        done, end = _committed(settings, settings.group_id)
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its pipeline process: no write at exit
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert 0 < done < end, (done, end)
    assert _acked_but_not_in_redis(settings) == []
    proc = start_worker(settings, artifacts, "--batch-size", "10")
    try:
        got = published_alerts(settings, want, proc)
        wait_drained(settings)
    finally:
        stop(proc)
    assert_same_alerts(got, want)
    assert_same_state(settings, mem)


def _committed_of(settings, topic: str, partition: int) -> int:
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.group_id,
                  "enable.auto.commit": False})
    try:
        return c.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    finally:
        c.close()


def test_a_buffered_message_behind_a_done_one_is_neither_committed_nor_lost(settings, artifacts, tmp_path):
    """A message whose event waits in the reorder buffer while the next message of its partition is
    done (disorder inside L). Faust 0.15 commits over a single un-acked message at the head of a
    partition, and over any number before the first commit (faust-streaming #606); the worker acks in
    offset order so that never happens: the offset stays uncommitted, and the event is applied when
    its time comes, not skipped by an offset fence that trusted the commit."""
    t0 = 1_709_294_400_000  # 2024-03-01 12:00 UTC, a tick start
    s = 1000

    def ev(user: str, kind: str, at_s: int) -> Event:
        return Event(user_id=user, ts_ms=t0 + at_s * s, type=kind, event_id=f"{user}-{kind}-{at_s}",
                     category="social", dwell_ms=30_000 if kind == "view" else 0, tz_offset_min=0,
                     age_band=None, item_id=None, session_id=None)

    # clicks@0: x at +100 s (buffered: the watermark stops at +70 s), y at +0 s (decided: its tick ends
    # at +60 s), z at +190 s; views@0: w at +200 s. Then x and w again, far later, move everything out.
    first = [ev("x", "click", 100), ev("y", "click", 0), ev("z", "click", 190), ev("w", "view", 200)]
    then = [ev("x", "click", 400), ev("w", "view", 500)]
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"\n".join(encode_event(e) for e in first + then) + b"\n")
    _, mem = offline({**artifacts, "log": log})
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})

    def publish(events: list[Event]) -> None:
        for e in events:
            topic = settings.clicks_topic if e.type == "click" else settings.views_topic
            producer.produce(topic, key=e.user_id.encode(), value=encode_event(e), partition=0)
        assert producer.flush(10) == 0

    fast = {"RISKSTREAM_COMMIT_INTERVAL_S": "0.05", "RISKSTREAM_CHECKPOINT_MS": "20"}
    proc = start_worker(settings, artifacts, "--batch-size", "1", "--idle-ms", "8000",
                        "--metrics-port", "19475", env=fast)
    try:
        time.sleep(4)  # joined; the inputs are not idle yet (8 s)
        publish(first)
        deadline = time.monotonic() + 30
        while _metric_or_zero(19475, _events_total("applied")) < 1:  # y is applied and decided
            assert time.monotonic() < deadline, "the worker applied nothing"
            assert proc.poll() is None, stop(proc).decode()[-3000:]
            time.sleep(0.1)
        time.sleep(2)  # its ack, a checkpoint and many commit intervals later
        assert _committed_of(settings, settings.clicks_topic, 0) < 0, \
            "committed past x's message while x was still in the reorder buffer"
        publish(then)
        wait_drained(settings, timeout=60)  # the inputs go idle: everything is decided and committed
        duplicates = _metric(19475, _events_total("duplicate"))
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert duplicates == 0, "nothing was redelivered: no event may be skipped as a duplicate"
    assert_same_state(settings, mem)
