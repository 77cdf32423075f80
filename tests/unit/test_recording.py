"""The step recording (RISKSTREAM_RECORD_STEPS): what a pipeline process writes, bench/replay_steps.py reads."""

from __future__ import annotations

import os
import stat

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.live.protocol import Step, TopicPartition
from stream.live.recording import StepRecorder, read_steps, step_from_record, step_record

_messages = st.lists(st.tuples(st.sampled_from(["ns.events.clicks", "ns.events.views"]), st.integers(0, 11),
                               st.integers(0, 2**40), st.one_of(st.none(), st.binary(max_size=40)),
                               st.binary(max_size=200)), max_size=20)
_steps = st.builds(
    Step, messages=_messages, partitions=st.lists(st.integers(0, 11), max_size=6),
    idle=st.dictionaries(st.tuples(st.integers(0, 11), st.sampled_from(["click", "view"])), st.booleans(), max_size=4),
    floor=st.dictionaries(st.builds(TopicPartition, st.sampled_from(["ns.events.clicks", "ns.events.views"]),
                                    st.integers(0, 11)), st.integers(0, 2**40), max_size=4),
    received_at=st.floats(0, 1e9), now_ms=st.integers(0, 2**45), generation=st.integers(0, 1000))


@given(_steps, st.floats(0, 10))
def test_a_step_reads_back_as_it_was_recorded(step: Step, cpu: float) -> None:
    assert step_from_record(orjson.loads(orjson.dumps(step_record(step, cpu)))) == (step, cpu)


def test_the_recorder_appends_to_an_owner_only_file_and_the_reader_gives_steps_in_order(tmp_path) -> None:
    path = tmp_path / "steps.jsonl"
    one = Step([("a.events.views", 3, 17, b"user-1", b'{"x": 1}')], [3], {(3, "view"): False},
               {TopicPartition("a.events.views", 3): 10}, 12.5, 1_700_000_000_000, 4)
    two = Step([], [], {(3, "click"): True}, {}, 13.0, 1_700_000_000_500, 4)
    rec = StepRecorder(path)
    rec.write(one, 0.25)
    rec.write(two, 0.0)
    rec.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    StepRecorder(path).write(one, 0.5)  # a second process appends
    assert list(read_steps(path)) == [(one, 0.25), (two, 0.0), (one, 0.5)]


def test_a_malformed_line_names_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "steps.jsonl"
    path.write_bytes(orjson.dumps(step_record(Step([], [], {}, {}, 0.0, 0), 0.0)) + b'\n{"v": 1, "cpu_s": 1}\n')
    with pytest.raises(ValueError, match=r"steps.jsonl:2: malformed step record"):
        list(read_steps(path))
    path.write_bytes(b'{"v": 2}\n')
    with pytest.raises(ValueError, match=r"steps.jsonl:1: not a step record of version 1"):
        list(read_steps(path))


def test_a_failed_write_stops_the_recording_not_the_caller(tmp_path, caplog) -> None:
    rec = StepRecorder(tmp_path / "steps.jsonl")
    os.close(rec._fd)  # as if the disk were gone: the next write fails
    step = Step([], [], {}, {}, 0.0, 0)
    rec.write(step, 0.0)
    rec.write(step, 0.0)  # stopped: nothing is tried any more
    assert rec._fd < 0 and "step recording" in caplog.text
