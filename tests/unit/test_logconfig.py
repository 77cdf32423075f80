"""One log format: JSON lines when asked, and librdkafka's repeats rate-limited."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from stream.logconfig import RateLimit, log_config


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    cfg = log_config("INFO", fmt)
    buf = io.StringIO()
    cfg["handlers"]["stderr"]["stream"] = buf
    logging.config.dictConfig(cfg)
    return logging.getLogger("riskstream.test"), buf


def test_json_lines_carry_time_level_logger_process_and_message() -> None:
    log, buf = _capture("json")
    try:
        log.warning("hello %s", "there")
        rec = json.loads(buf.getvalue().strip())
        assert rec["message"] == "hello there" and rec["level"] == "WARNING"
        assert rec["logger"] == "riskstream.test" and rec["time"] and rec["process"]
    finally:
        logging.config.dictConfig(log_config("WARNING", "text"))


def test_text_lines() -> None:
    log, buf = _capture("text")
    try:
        log.warning("plain")
        assert buf.getvalue().rstrip().endswith("WARNING riskstream.test: plain")
    finally:
        logging.config.dictConfig(log_config("WARNING", "text"))


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        log_config("INFO", "xml")


def test_repeats_are_held_back_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("stream.logconfig.time.monotonic", lambda: now[0])
    f = RateLimit(every_s=30)

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("riskstream.kafka", logging.ERROR, __file__, 1, msg, (), None)

    assert f.filter(rec("Connect to 127.0.0.1:9092 failed"))
    assert not any(f.filter(rec("Connect to 127.0.0.1:9092 failed")) for _ in range(50))
    assert f.filter(rec("another message"))
    now[0] += 31
    r = rec("Connect to 127.0.0.1:9092 failed")
    assert f.filter(r)
    assert r.getMessage() == "Connect to 127.0.0.1:9092 failed (and 50 more like it in the last 31 s)"


def test_aiokafka_repeats_are_rate_limited_on_the_handler_and_other_loggers_are_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("stream.logconfig.time.monotonic", lambda: now[0])
    cfg = log_config("INFO", "text")
    assert cfg["handlers"]["stderr"]["filters"] == ["kafka_repeats"]
    spec = dict(cfg["filters"]["kafka_repeats"])
    f = RateLimit(only=spec["only"])

    def rec(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), None)

    lost = "Unable connect to node with id 2: [Errno 111] Connect call failed ('127.0.0.1', 19093)"
    assert f.filter(rec("aiokafka.conn", lost))
    assert [f.filter(rec("aiokafka.conn", lost)) for _ in range(20)] == [False] * 20
    assert f.filter(rec("aiokafka.cluster", lost))  # another logger: its own first line
    assert all(f.filter(rec("riskstream.pipeline", "same text")) for _ in range(5))  # not limited
    now[0] += 31
    r = rec("aiokafka.conn", lost)
    assert f.filter(r) and r.getMessage().endswith("(and 20 more like it in the last 31 s)")
