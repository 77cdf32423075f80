"""Golden files: a committed event log and its exact expected alerts (docs/contracts.md §3)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import orjson

from stream.offline import score_log
from tests.scenarios import feature_scorer, short_policy

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
NOW_MS = 1_800_000_000_000  # fixed "wall clock" for the future-timestamp check


def run() -> tuple[bytes, object]:
    buf = io.BytesIO()
    summary = score_log(GOLDEN / "events.jsonl", buf, policy_config=short_policy(), scorer=feature_scorer(),
                        now_ms=NOW_MS)
    return buf.getvalue(), summary


def test_golden_log_gives_exactly_the_golden_alerts():
    got, summary = run()
    expected_path = GOLDEN / "alerts.jsonl"
    if os.environ.get("RISKSTREAM_UPDATE_GOLDEN") == "1":
        expected_path.write_bytes(got)
    assert got == expected_path.read_bytes()
    assert dict(summary.invalid) == {"malformed_json": 1, "wrong_type": 1}


def test_golden_alerts_contain_the_expected_stories():
    alerts = [orjson.loads(line) for line in (GOLDEN / "alerts.jsonl").read_bytes().splitlines()]
    by_user: dict[str, set[str]] = {}
    for a in alerts:
        by_user.setdefault(a["user_id"], set()).add(f'{a["kind"]}/{a["level"]}')
        assert set(a) >= {"v", "alert_id", "user_id", "kind", "level", "score", "model_version", "event_time",
                          "emitted_at", "reasons", "features"}
    assert "rule:curfew/elevated" in by_user["minor-night"]
    assert "rule:continuous_use/elevated" in by_user["teen-binge"]
    assert not any(k.startswith("rule:") for k in by_user.get("adult-night", set()))
    assert any(k.startswith("ml_risk/") for ks in by_user.values() for k in ks)


def test_same_log_scored_twice_gives_the_same_bytes():
    assert run()[0] == run()[0]


def test_cli_score_rules_only_writes_alerts_and_a_summary(tmp_path):
    out = tmp_path / "alerts.jsonl"
    r = subprocess.run([sys.executable, "-m", "stream", "score", str(GOLDEN / "events.jsonl"), "--no-model",
                        "--out", str(out)], capture_output=True, text=True, cwd=GOLDEN.parents[1])
    assert r.returncode == 0, r.stderr
    kinds = {orjson.loads(line)["kind"] for line in out.read_bytes().splitlines()}
    assert "rule:curfew" in kinds and "ml_risk" not in kinds
    assert "invalid: 2" in r.stderr and "malformed_json=1" in r.stderr
    assert "events/s" in r.stderr


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stream", "score", str(tmp_path / "missing.jsonl"), "--no-model"],
                       capture_output=True, text=True, cwd=GOLDEN.parents[1])
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "missing.jsonl" in r.stderr
    r = subprocess.run([sys.executable, "-m", "stream", "score", str(GOLDEN / "events.jsonl"),
                        "--model", str(tmp_path / "nope.onnx")], capture_output=True, text=True,
                       cwd=GOLDEN.parents[1])
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0, r.stderr
