"""The contracts as files (stream/contracts/*.schema.json, docs/asyncapi.yaml) against the code.

* every record the code writes validates: golden alerts, ``riskstream score`` over generated logs
  (the pipeline's DLQ records are checked by tests/unit/test_pipeline.py's FakeProducer, the live
  ones by the integration tests, with tests/contracts.py);
* the event schema and the hand-written decoder (stream/core/events.py) agree on accept/reject,
  on events generated from the schema and on near misses around every limit; the few things JSON
  Schema cannot say are listed in the schema's description and pinned here (``schema_gap``);
* the AsyncAPI document parses with the official parser (tools/asyncapi/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from stream.cli import main
from stream.core.events import MAX_FUTURE_MS, MAX_MESSAGE_BYTES, MIN_TS_MS, Reason, decode_message, encode_event
from stream.offline import score_log
from tests.contracts import NAMES, assert_valid_alert, registry, schema, validator
from tests.scenarios import feature_scorer, random_log, short_policy

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the schema's nominal bound
NOW_MS = MAX_TS_MS - MAX_FUTURE_MS  # so that no event the schema admits is "in the future"


# --- the files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_schemas_are_valid_2020_12_with_ids_and_descriptions(name: str) -> None:
    s = schema(name)
    validator(name).check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"].endswith(f"/{name}.v1.schema.json") and s["title"] and s["description"]
    registry().get_or_retrieve(s["$id"])  # every $ref resolves inside the package (no network)


def test_schemas_are_package_data() -> None:
    toml = (ROOT / "pyproject.toml").read_text()
    assert '"contracts/*.schema.json"' in toml


# --- records the code writes --------------------------------------------------------------------


def test_golden_alerts_are_valid() -> None:
    lines = (GOLDEN / "alerts.jsonl").read_bytes().splitlines()
    kinds = {assert_valid_alert(line)["kind"] for line in lines}
    assert {"ml_risk", "rule:curfew", "rule:continuous_use"} <= kinds


def test_alerts_scored_from_random_logs_are_valid() -> None:
    kinds: set[tuple[str, str]] = set()
    for seed in range(2):
        log = b"".join(encode_event(e) + b"\n" for e in random_log(seed))
        out = _score_bytes(log)
        for line in out.splitlines():
            a = assert_valid_alert(line)
            kinds.add((a["kind"], a["level"]))
    assert len(kinds) >= 4, kinds


def test_riskstream_score_over_a_simulated_log_writes_valid_alerts(tmp_path: Path) -> None:
    log, out = tmp_path / "e.jsonl.gz", tmp_path / "alerts.jsonl"
    r = CliRunner().invoke(main, ["simulate", "--users", "40", "--days", "10", "--seed", "3", "--out", str(log),
                                  "--labels", str(tmp_path / "l.csv"), "--workers", "1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["score", str(log), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    alerts = [assert_valid_alert(line) for line in out.read_bytes().splitlines()]
    assert any(a["kind"] == "ml_risk" for a in alerts) and any(a["kind"].startswith("rule:") for a in alerts)


def _score_bytes(log: bytes) -> bytes:
    import io
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(log)
        f.flush()
        buf = io.BytesIO()
        score_log(Path(f.name), buf, policy_config=short_policy(), scorer=feature_scorer(), now_ms=NOW_MS)
    return buf.getvalue()
