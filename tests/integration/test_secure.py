"""riskstream against the secure local stack (`deploy/local/stack up --secure`, docs/security.md):
Kafka SASL_SSL (SCRAM-SHA-512, and a client certificate: mutual TLS) and Redis over TLS with an
ACL user.

(a) replay → worker → Redis → risk.alerts → `alerts tail`, every client over SASL_SSL and Redis
TLS/ACL, gives the offline alerts and the offline window state; (b) a wrong password, an untrusted
CA or a plaintext client against a TLS port fails fast with one clear line and a non-zero exit;
(c) no password appears in anything any process printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from stream.settings import Settings, load_settings
from stream.state import redis_client
from stream.tools.namespace import delete_namespace
from tests.contracts import assert_valid_alert
from tests.integration.conftest import HISTORY_RETENTION_MS, STACK, _stack
from tests.integration.test_worker_parity import (
    artifacts,
    assert_same_state,
    offline,
    start_worker,
    stop,
)

__all__ = ["artifacts"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parents[2]
SECURITY_VARS = ("RISKSTREAM_KAFKA_BOOTSTRAP", "RISKSTREAM_KAFKA_SECURITY_PROTOCOL", "RISKSTREAM_KAFKA_SASL_MECHANISM",
                 "RISKSTREAM_KAFKA_SASL_USERNAME", "RISKSTREAM_KAFKA_SASL_PASSWORD",
                 "RISKSTREAM_KAFKA_SSL_CA_LOCATION", "RISKSTREAM_KAFKA_SSL_CERTIFICATE_LOCATION",
                 "RISKSTREAM_KAFKA_SSL_KEY_LOCATION", "RISKSTREAM_REDIS_URL", "RISKSTREAM_REDIS_SSL_CA_LOCATION")
FAIL_FAST_S = 45  # a worker's start (imports, model) plus the check; retrying would go on forever


def _read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"export (RISKSTREAM_[A-Z0-9_]+)=(.*)", line.strip())
        if m:
            env[m[1]] = m[2]
    return env


@pytest.fixture(scope="session")
def secure_env() -> Iterator[dict[str, str]]:
    """The secure stack's client settings (`stack up --secure` first when it is down): fails, never skips."""
    was_up = _stack("status", "--secure").returncode == 0
    if not was_up:
        r = _stack("up", "--secure")
        if r.returncode != 0:
            pytest.fail(f"{STACK} up --secure failed ({r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)
    state = Path(os.environ.get("RISKSTREAM_STATE_DIR", ROOT / ".state"))
    env = _read_env(state / "secure" / "env")
    missing = [k for k in SECURITY_VARS if k not in env]
    if missing:
        pytest.fail(f"{state}/secure/env lacks {missing}", pytrace=False)
    yield env
    if not was_up and os.environ.get("RISKSTREAM_KEEP_STACK") != "1":
        _stack("down", "--secure")


def _settings(env: dict[str, str], **over: object) -> Settings:
    kw = {k.removeprefix("RISKSTREAM_").lower(): v for k, v in env.items()}
    return load_settings(**{**kw, **over})


def _secrets(env: dict[str, str]) -> list[str]:
    redis_pw = re.search(r"://[^:/]+:([^@]+)@", env["RISKSTREAM_REDIS_URL"])
    assert redis_pw is not None
    return [env["RISKSTREAM_KAFKA_SASL_PASSWORD"], redis_pw[1]]


def _run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=timeout, env={**_clean_environ(), "PYTHONPATH": str(ROOT), **env})


def _clean_environ() -> dict[str, str]:
    """This process's environment without riskstream settings: each test says what it uses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RISKSTREAM_") or k == "RISKSTREAM_STATE_DIR"}


@pytest.fixture
def secure(secure_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A fresh namespace on the secure stack, its topics made by `riskstream topics create` over SASL_SSL."""
    env = {**secure_env, "RISKSTREAM_NAMESPACE": f"it{uuid.uuid4().hex[:10]}", "RISKSTREAM_PARTITIONS": "3",
           "RISKSTREAM_INPUT_RETENTION_MS": str(HISTORY_RETENTION_MS)}
    r = _run(["topics", "create"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    yield env
    delete_namespace(_settings(env))


def test_replay_worker_and_tail_over_sasl_ssl_and_redis_tls_give_the_offline_alerts(secure, artifacts):
    _check_parity(secure, artifacts, _secrets(secure))


def test_the_least_privilege_redis_acl_of_docs_security_is_enough(secure, artifacts):
    """docs/security.md §3's Redis rule: the namespace's keys and the store's command categories only."""
    admin = redis_client(_settings(secure))
    name, pw, ns = f"rs-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, secure["RISKSTREAM_NAMESPACE"]
    admin.execute_command("ACL", "SETUSER", name, "on", f">{pw}", "resetkeys", f"~{ns}:rs:*", "resetchannels",
                          "-@all", "+@read", "+@write", "+@scripting", "+@connection", "+info",
                          "+cluster|slots", "+cluster|shards")
    try:
        url = re.sub(r"://[^@]+@", f"://{name}:{pw}@", secure["RISKSTREAM_REDIS_URL"])
        restricted = {**secure, "RISKSTREAM_REDIS_URL": url}
        probe = redis_client(_settings(restricted))
        with pytest.raises(redis.exceptions.NoPermissionError):
            probe.get("rs:outside-the-namespace")
        probe.close()
        _check_parity(restricted, artifacts, [*_secrets(secure), pw])
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()


def _check_parity(secure: dict[str, str], artifacts: dict[str, Path], secrets: list[str]) -> None:
    expected, mem = offline(artifacts)
    want = {a.alert_id for a in expected}
    assert len(want) >= 5, "the scenario should produce alerts"
    printed: list[str] = []
    r = _run(["replay", str(artifacts["log"]), "--no-progress"], secure)
    printed += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr
    s = _settings(secure)
    proc = start_worker(s, artifacts, env={**_clean_environ(), **secure, "RISKSTREAM_LOG_FORMAT": "json"})
    try:
        got: list[dict] = []
        deadline = time.monotonic() + 240
        while {a["alert_id"] for a in got} != want and time.monotonic() < deadline:
            assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{stop(proc).decode()[-4000:]}"
            t = _run(["alerts", "tail", "--from-beginning", "--json", "--idle-timeout", "5"], secure)
            printed += [t.stdout, t.stderr]
            assert t.returncode == 0, t.stderr
            got = [assert_valid_alert(line) for line in t.stdout.splitlines()]
        # the worker's window state, read back from Redis over TLS as the ACL user
        deadline = time.monotonic() + 60
        while True:
            try:
                assert_same_state(s, mem)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    finally:
        out = stop(proc).decode()
        printed.append(out)
    assert proc.returncode == 0, f"SIGTERM must stop the worker cleanly:\n{out[-3000:]}"
    ids = [a["alert_id"] for a in got]
    assert set(ids) == want and len(ids) == len(set(ids))
    assert orjson.loads(orjson.dumps(got[0]))["user_id"]
    everything = "\n".join(printed)
    for secret in secrets:
        assert secret not in everything, "a password was printed"


def _other_ca(tmp_path: Path) -> Path:
    """A CA the servers' certificates are not signed by."""
    key, crt = tmp_path / "other-ca.key", tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "1", "-subj", "/CN=not the riskstream CA"], check=True, capture_output=True)
    return crt


def _plaintext_kafka(env: dict[str, str]) -> dict[str, str]:
    env = {**env, "RISKSTREAM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    for k in ("RISKSTREAM_KAFKA_SASL_MECHANISM", "RISKSTREAM_KAFKA_SASL_USERNAME", "RISKSTREAM_KAFKA_SASL_PASSWORD",
              "RISKSTREAM_KAFKA_SSL_CA_LOCATION", "RISKSTREAM_KAFKA_SSL_CERTIFICATE_LOCATION",
              "RISKSTREAM_KAFKA_SSL_KEY_LOCATION"):
        env.pop(k)
    return env


def _wrong_redis_password(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RISKSTREAM_REDIS_URL": re.sub(r"(://[^:/]+:)[^@]+@", r"\1not-the-password@",
                                                  env["RISKSTREAM_REDIS_URL"])}


# (name, command, how the settings are broken, exit code, words the one error line must hold)
CASES = [
    ("kafka-wrong-password-worker", "worker", lambda env, ca: {**env, "RISKSTREAM_KAFKA_SASL_PASSWORD": "wrong-pw-1"},
     77, "SASL authentication error"),
    ("kafka-wrong-ca-replay", "replay", lambda env, ca: {**env, "RISKSTREAM_KAFKA_SSL_CA_LOCATION": str(ca)},
     1, "certificate verify failed"),
    ("kafka-plaintext-client-tail", "tail", lambda env, ca: _plaintext_kafka(env),
     1, "closes the connection at the first request"),
    ("kafka-no-client-certificate-replay", "replay", lambda env, ca: {
        k: v for k, v in env.items() if k not in ("RISKSTREAM_KAFKA_SSL_CERTIFICATE_LOCATION",
                                                  "RISKSTREAM_KAFKA_SSL_KEY_LOCATION")},
     1, "alert bad certificate"),
    ("kafka-wrong-ca-worker", "worker", lambda env, ca: {**env, "RISKSTREAM_KAFKA_SSL_CA_LOCATION": str(ca)},
     77, "certificate verify failed"),
    ("redis-wrong-password-worker", "worker", lambda env, ca: _wrong_redis_password(env),
     77, "invalid username-password pair"),
    ("redis-wrong-ca-worker", "worker", lambda env, ca: {**env, "RISKSTREAM_REDIS_SSL_CA_LOCATION": str(ca)},
     77, "CERTIFICATE_VERIFY_FAILED"),
]


@pytest.mark.parametrize(("name", "command", "broken", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_refused_credentials_or_trust_fail_fast_with_one_clear_line(secure, artifacts, tmp_path, name, command,
                                                                   broken, code, words):
    env = broken(secure, _other_ca(tmp_path))
    args = {"worker": ["worker", "--model", str(artifacts["model"]), "--policy-config", str(artifacts["policy"])],
            "replay": ["replay", str(artifacts["log"]), "--no-progress"],
            "tail": ["alerts", "tail", "--idle-timeout", "5"]}[command]
    t0 = time.monotonic()
    r = _run(args, env, timeout=FAIL_FAST_S + 30)
    took = time.monotonic() - t0
    errors = [line for line in r.stderr.splitlines() if line.startswith("riskstream: error:")]
    assert r.returncode == code, f"exit {r.returncode}:\n{r.stderr[-3000:]}"
    assert len(errors) == 1 and words in errors[0], r.stderr[-3000:]
    assert took < FAIL_FAST_S, f"took {took:.0f} s"
    for secret in [*_secrets(secure), "wrong-pw-1", "not-the-password"]:
        assert secret not in r.stdout + r.stderr, "a password was printed"


def test_plaintext_redis_client_against_the_tls_port_gives_up_in_bounded_time(secure, artifacts):
    """A redis:// client at the TLS port sees a connection reset, which Redis also gives while it
    restarts: the store's bounded retries, then one line and exit 75 (EX_TEMPFAIL)."""
    env = {**secure, "RISKSTREAM_REDIS_URL": secure["RISKSTREAM_REDIS_URL"].replace("rediss://", "redis://", 1)}
    env.pop("RISKSTREAM_REDIS_SSL_CA_LOCATION")
    t0 = time.monotonic()
    r = _run(["worker", "--model", str(artifacts["model"]), "--policy-config", str(artifacts["policy"])], env,
             timeout=120)
    errors = [line for line in r.stderr.splitlines() if line.startswith("riskstream: error:")]
    assert r.returncode == 75, r.stderr[-3000:]
    assert len(errors) == 1 and "Redis is unavailable" in errors[0], r.stderr[-3000:]
    assert time.monotonic() - t0 < 90
    for secret in _secrets(secure):
        assert secret not in r.stdout + r.stderr
