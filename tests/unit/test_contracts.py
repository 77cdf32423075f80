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

import io
import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.internal.conjecture import utils as _cu
from hypothesis_jsonschema import _from_schema as _hjs
from hypothesis_jsonschema import from_schema

from stream.cli import main
from stream.core.events import (
    MAX_FUTURE_MS,
    MAX_MESSAGE_BYTES,
    MIN_TS_MS,
    Reason,
    decode_message,
    encode_event,
)
from stream.offline import score_log
from stream.settings import load_settings
from tests.contracts import NAMES, VERSIONS, assert_valid_alert, registry, schema, validator
from tests.scenarios import feature_scorer, random_log, short_policy
from tests.tools import tool_missing

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
    assert s["$id"].endswith(f"/{name}.v{VERSIONS.get(name, 1)}.schema.json") and s["title"] and s["description"]
    registry().get_or_retrieve(s["$id"])  # every $ref resolves inside the package (no network)


def test_schemas_are_package_data() -> None:
    toml = (ROOT / "pyproject.toml").read_text()
    assert '"contracts/*.schema.json"' in toml


# --- records the code writes --------------------------------------------------------------------


def test_golden_alerts_are_valid() -> None:
    lines = (GOLDEN / "alerts.jsonl").read_bytes().splitlines()
    kinds = {assert_valid_alert(line)["kind"] for line in lines}
    assert {"ml_risk", "rule:curfew", "rule:continuous_use"} <= kinds


def test_alerts_scored_from_random_logs_are_valid(tmp_path: Path) -> None:
    kinds: set[tuple[str, str]] = set()
    for seed in range(2):
        log = tmp_path / f"{seed}.jsonl"
        log.write_bytes(b"".join(encode_event(e) + b"\n" for e in random_log(seed)))
        out = io.BytesIO()
        score_log(log, out, policy_config=short_policy(), scorer=feature_scorer(), now_ms=NOW_MS)
        for line in out.getvalue().splitlines():
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


# --- the event schema and the decoder agree ------------------------------------------------------

INT_FIELDS = {"v": (1, 1), "ts": (MIN_TS_MS, MAX_TS_MS), "dwell_ms": (0, 86_400_000),
              "tz_offset_min": (-840, 840)}
STR_FIELDS = {"event_id": (1, 128), "user_id": (1, 128), "item_id": (0, 256), "category": (0, 64),
              "session_id": (0, 128), "age_band": (0, 32)}
FIELDS = [*INT_FIELDS, *STR_FIELDS, "type"]


def _raw(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not JSON text at all
        assume(False)
        raise


def schema_gap(obj: dict[str, Any]) -> Reason | None:
    """What the decoder rejects although the schema admits it (event.v1.schema.json's description)."""
    for name in INT_FIELDS:
        if type(obj.get(name)) is float:  # 1.0: an integer to JSON Schema, wrong_type to the decoder
            return Reason.WRONG_TYPE
    ts = obj.get("ts")
    if type(ts) is str and ts[:10] == "2000-01-01" and ts[-6] == "+":  # before 2000 in UTC
        local_ms = int(ts[11:13]) * 3_600_000 + int(ts[14:16]) * 60_000 + int(ts[17:19]) * 1000
        if local_ms < int(ts[-5:-3]) * 3_600_000 + int(ts[-2:]) * 60_000:
            return Reason.OUT_OF_RANGE
    return None


def check_agreement(obj: dict[str, Any]) -> None:
    raw = _raw(obj)
    events, rejections = decode_message(raw, topic_type=None, key=None, now_ms=NOW_MS)
    if len(raw) > MAX_MESSAGE_BYTES:  # the size limit is in the schemas' descriptions only
        assert [r.reason for r in rejections] == [Reason.OVERSIZED]
        return
    errors = list(validator("input").iter_errors(obj))
    if "events" in obj:
        # message level: an error outside an element rejects the whole message, else each element alone
        outside = [e for e in errors if len(e.absolute_path) < 2]
        gap = Reason.WRONG_TYPE if type(obj.get("v")) is float else None  # "v": 1.0
        if outside or gap:
            assert len(rejections) == 1 and rejections[0].index is None and not events, (obj, outside, rejections)
            assert outside or rejections[0].reason is gap
            return
        items = obj["events"]
        refused = {r.index: r for r in rejections}
        for i, item in enumerate(items):
            if isinstance(item, dict):
                check_element(item, refused.get(i))
            else:
                assert refused[i].reason is Reason.NOT_AN_OBJECT
        assert len(events) + len(rejections) == len(items)
        return
    check_element(obj, rejections[0] if rejections else None, errors)


def _beyond_max_ts(ts: Any) -> bool:
    if type(ts) is int:
        return ts > MAX_TS_MS
    return type(ts) is str and ts[:4] == "9999" and ts[-6] == "-"  # 9999-12-31T23:00:00-05:00


def check_element(obj: dict[str, Any], rejection: Any, errors: list[Any] | None = None) -> None:
    if errors is None:
        errors = list(validator("event").iter_errors(obj))
    gap = schema_gap(obj)
    if currently_in_test_context():  # --hypothesis-show-statistics: both sides of the boundary are hit
        event(f"element {'refused: ' + rejection.reason if rejection else 'accepted'}")
    if errors:
        assert rejection is not None, f"the decoder accepts what the schema refuses: {obj!r}\n{errors[0].message}"
        context = {Reason.TYPE_TOPIC_MISMATCH, Reason.USER_KEY_MISMATCH}
        if not _beyond_max_ts(obj.get("ts")):  # the schema's upper bound is nominal: the clock check decides
            context.add(Reason.FUTURE_TS)
        assert rejection.reason not in context, (obj, rejection)
    elif gap is not None:
        assert rejection is not None and rejection.reason is gap, (obj, rejection)
    else:
        assert rejection is None, f"the decoder refuses what the schema accepts: {obj!r}\n{rejection}"


class _Many:
    """hypothesis-jsonschema 0.23.1 (the newest) drives Hypothesis's private ``many`` through
    ``more()``, which newer Hypothesis replaced by ``with many(...) as m: for _ in m``; this adapts
    the one call site (hypothesis_jsonschema/_from_schema.py, from_object_schema)."""

    def __init__(self, data: Any, **kwargs: Any) -> None:
        self._many = _cu.many(data, **kwargs)
        self._many.__enter__()
        self._it = iter(self._many)

    def more(self) -> bool:
        try:
            next(self._it)
            return True
        except StopIteration:
            self._many.__exit__(None)
            return False

    def reject(self) -> None:
        self._many.reject()


if not hasattr(_cu.many, "more"):
    _hjs.cu = SimpleNamespace(many=_Many)

valid_events = from_schema(schema("event"))
json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                               max_size=3),
                           max_leaves=8)
# the characters that count differently in bytes, UTF-16 units and code points
chars = st.sampled_from(["a", "é", "€", "😀", " ", "\n", "\x00"])


def rfc3339_variants() -> st.SearchStrategy[str]:
    """Timestamps on both sides of the decoder's RFC 3339 rules."""
    base = st.builds(
        lambda y, mo, d, h, mi, s: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}",
        st.sampled_from([1999, 2000, 2001, 2023, 2024, 2100, 2400, 9999]), st.integers(0, 13), st.integers(0, 32),
        st.integers(0, 24), st.integers(0, 60), st.integers(0, 61))
    sep = st.sampled_from(["T", "t", " ", "_", ""])
    frac = st.sampled_from(["", ".", ".5", ".123", ".123456789", ".12a", ".١٢"])
    off = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-12:00", "+23:59", "+24:00", "+05:60", "+0530",
                           "", "UTC", "+05:30\n", "Z\n"])
    real = st.datetimes(datetime(1999, 12, 31), datetime(9999, 12, 31, 23, 59, 59)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S"))
    return st.builds(lambda b, s, f, o: b[:10] + s + b[11:] + f + o if s else b[:10] + b[11:] + f + o,
                     base | real, sep, frac, off)


@st.composite
def mutation(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    obj = dict(obj)
    name = draw(st.sampled_from(FIELDS))
    how = draw(st.sampled_from(["drop", "null", "wrong_type", "bound", "extra", "ts", "type"]))
    if how == "drop":
        obj.pop(name, None)
    elif how == "null":
        obj[name] = None
    elif how == "wrong_type":
        obj[name] = draw(json_values | st.sampled_from([True, False, 1.0, 1.5, 1e3, "1", [], {}]))
        if name in INT_FIELDS and draw(st.booleans()):
            obj[name] = float(draw(st.integers(*INT_FIELDS[name])))  # integral, written as 1.0
    elif how == "bound":
        if name in INT_FIELDS:
            lo, hi = INT_FIELDS[name]
            obj[name] = draw(st.sampled_from([lo - 1, lo, hi, hi + 1, -(2**63), 2**64 - 1, 2**64]))
        elif name in STR_FIELDS:
            lo, hi = STR_FIELDS[name]
            n = draw(st.sampled_from([n for n in (lo - 1, lo, hi, hi + 1) if n >= 0]))
            obj[name] = "".join(draw(st.lists(chars, min_size=n, max_size=n)))
        else:
            obj[name] = draw(st.sampled_from(["click", "view", "Click", "VIEW", "", "views", "click "]))
    elif how == "extra":
        obj[draw(st.text(max_size=12) | st.sampled_from(["events", "V", "type "]))] = draw(json_values)
    elif how == "ts":
        obj["ts"] = draw(rfc3339_variants())
    else:
        obj["type"] = draw(st.sampled_from(["click", "view"]))  # a click with a view's fields and back
    return obj


@st.composite
def near_misses(draw: st.DrawFn) -> dict[str, Any]:
    obj = draw(valid_events)
    for _ in range(draw(st.integers(1, 3))):
        obj = draw(mutation(obj))
    return obj


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(valid_events)
def test_the_decoder_accepts_every_event_the_schema_generates(obj: dict[str, Any]) -> None:
    check_agreement(obj)


@SETTINGS
@given(near_misses())
def test_the_decoder_and_the_schema_agree_on_near_misses(obj: dict[str, Any]) -> None:
    check_agreement(obj)


@settings(SETTINGS, max_examples=60)
@given(st.lists(near_misses() | json_values, min_size=0, max_size=3),
       st.sampled_from([None, 1, 1.0, 2, "1", True]), st.sampled_from(["list", "list", "list", "object", "none"]))
def test_the_decoder_and_the_schema_agree_on_batch_envelopes(items: list[Any], v: Any, shape: str) -> None:
    env: dict[str, Any] = {"events": items if shape == "list" else {"0": items} if shape == "object" else None}
    if v is not None:
        env["v"] = v
    check_agreement(env)


def test_envelope_limits() -> None:
    event = {"event_id": "e", "user_id": "u", "ts": MIN_TS_MS, "type": "click"}
    check_agreement({"events": [event] * 1000})
    check_agreement({"events": [event] * 1001})
    check_agreement({"events": []})
    check_agreement({"events": [{**event, "item_id": "i" * 256}] * 250})  # too big


EVENT = {"event_id": "e", "user_id": "u", "ts": 1_704_067_200_000, "type": "view", "dwell_ms": 1000}


@pytest.mark.parametrize(("field", "value", "outcome"), [
    ("ts", "2000-01-01T00:30:00+01:00", Reason.OUT_OF_RANGE),  # schema gap: 1999 in UTC
    ("ts", "2000-01-01T01:00:00+01:00", None),
    ("ts", "2000-01-01T00:00:00-01:00", None),
    ("ts", 1_704_067_200_000.0, Reason.WRONG_TYPE),  # schema gap: integral float
    ("v", 1.0, Reason.WRONG_TYPE),
    ("dwell_ms", 1e3, Reason.WRONG_TYPE),
    ("ts", "2024-01-01T00:00:00Z\n", Reason.WRONG_TYPE),  # found by the property test: $ in Python's re
    ("ts", "2024-02-29 23:59:59.9999z", None),
    ("ts", "2023-02-29T00:00:00Z", Reason.WRONG_TYPE),
    ("ts", "2100-02-29T00:00:00Z", Reason.WRONG_TYPE),
    ("ts", "2000-02-29T00:00:00Z", None),
    ("ts", "2024-06-30T23:59:60Z", Reason.WRONG_TYPE),
    ("ts", "١٩٩٩-01-01T00:00:00Z", Reason.WRONG_TYPE),
    ("ts", MIN_TS_MS - 1, Reason.OUT_OF_RANGE),
    ("event_id", "😀" * 128, None),
    ("event_id", "😀" * 129, Reason.OUT_OF_RANGE),
    ("category", "É" * 64, None),
    ("tz_offset_min", -841, Reason.OUT_OF_RANGE),
    ("dwell_ms", None, Reason.MISSING_FIELD),
    ("events", None, None),  # an 'events' key, even null, makes the message an envelope (refused as a whole)
])
def test_the_boundaries_and_the_known_gaps(field: str, value: Any, outcome: Reason | None) -> None:
    obj = {**EVENT, field: value}
    check_agreement(obj)
    _, rejections = decode_message(_raw(obj), topic_type=None, key=None, now_ms=NOW_MS)
    if field == "events":
        assert [r.reason for r in rejections] == [Reason.INVALID_BATCH]
    else:
        assert [r.reason for r in rejections] == ([outcome] if outcome else [])


# --- the AsyncAPI document ----------------------------------------------------------------------

ASYNCAPI_TOOL = ROOT / "tools" / "asyncapi"


def test_the_asyncapi_document_parses_with_the_official_parser_and_names_every_topic() -> None:
    node = shutil.which("node")
    if node is None or not (ASYNCAPI_TOOL / "node_modules" / "@asyncapi" / "parser" / "package.json").is_file():
        tool_missing("Node.js or the AsyncAPI parser is missing: run `make asyncapi-tools` (npm ci in tools/asyncapi)")
    r = subprocess.run([node, str(ASYNCAPI_TOOL / "validate.mjs"), str(ROOT / "docs" / "asyncapi.yaml")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    s = load_settings()
    addresses = next(line for line in r.stdout.splitlines() if line.startswith("addresses: ")).split()[1:]
    assert sorted(addresses) == sorted([s.clicks_topic, s.views_topic, s.alerts_topic, s.levels_topic, s.dlq_topic])
