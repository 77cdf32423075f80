"""Opt-in recording of the steps a pipeline process receives, for replaying them in-process.

``RISKSTREAM_RECORD_STEPS=<file>`` makes every pipeline process append each :class:`Step` it
receives, with the CPU time the pipeline spent on it, to that file as one JSON line (one
``write`` per line, so several pipeline processes can share a file). ``bench/replay_steps.py``
feeds a recording through an in-process pipeline with real Redis: the code's cost on exactly the
steps a live run produced, apart from the live machine's (the Faust process, the broker) and
comparable between two versions of the code (docs/perf-profile.md, session 16).

A recording holds the raw input: user ids and every event as it was sent. It is created readable by
its owner only (0600); delete it once it has served. Off by default.

A line: ``{"v": 1, "cpu_s", "received_at", "now_ms", "generation", "partitions",
"messages": [[topic, partition, offset, key (base64 or null), value (base64)], ...],
"idle": [[partition, input kind, idle], ...], "floor": [[topic, partition, offset], ...]}``.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from stream.live.protocol import Step, TopicPartition

__all__ = ["RECORD_VERSION", "StepRecorder", "read_steps", "step_from_record", "step_record"]

RECORD_VERSION = 1

log = logging.getLogger("riskstream.pipeline")


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s, validate=True)


def step_record(step: Step, cpu_s: float) -> dict[str, Any]:
    """The JSON object of one recorded step."""
    return {
        "v": RECORD_VERSION, "cpu_s": cpu_s, "received_at": step.received_at, "now_ms": step.now_ms,
        "generation": step.generation, "partitions": list(step.partitions),
        "messages": [[t, p, off, _b64(key), _b64(value)] for t, p, off, key, value in step.messages],
        "idle": [[p, kind, flag] for (p, kind), flag in step.idle.items()],
        "floor": [[tp.topic, tp.partition, off] for tp, off in step.floor.items()],
    }


def step_from_record(obj: dict[str, Any]) -> tuple[Step, float]:
    """A recorded step and the pipeline CPU seconds it took live; ``ValueError`` on anything else."""
    if not isinstance(obj, dict) or obj.get("v") != RECORD_VERSION:
        raise ValueError(f"not a step record of version {RECORD_VERSION}")
    try:
        step = Step(
            messages=[(str(t), int(p), int(off), _unb64(k), _unb64(v) or b"") for t, p, off, k, v in obj["messages"]],
            partitions=[int(p) for p in obj["partitions"]],
            idle={(int(p), str(kind)): bool(flag) for p, kind, flag in obj["idle"]},
            floor={TopicPartition(str(t), int(p)): int(off) for t, p, off in obj["floor"]},
            received_at=float(obj["received_at"]), now_ms=int(obj["now_ms"]), generation=int(obj["generation"]))
        return step, float(obj["cpu_s"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed step record: {e}") from e


class StepRecorder:
    """Appends steps to a recording (created 0600 if new)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, step: Step, cpu_s: float) -> None:
        """Append one step; a failed write (disk full) stops the recording, never the pipeline."""
        if self._fd < 0:
            return
        try:
            os.write(self._fd, orjson.dumps(step_record(step, cpu_s)) + b"\n")
        except OSError as e:
            log.warning("step recording to %s stopped: %s", self.path, e)
            self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:  # already gone (the write that failed): nothing left to release
                pass


def read_steps(path: str | os.PathLike[str]) -> Iterator[tuple[Step, float]]:
    """The steps of a recording, in the order they were written."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield step_from_record(orjson.loads(line))
                except (orjson.JSONDecodeError, ValueError) as e:
                    raise ValueError(f"{path}:{n}: {e}") from e
