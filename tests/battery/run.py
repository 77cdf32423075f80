"""Run the face-validity battery through the real offline detector: ``python -m tests.battery.run``.

The events of :mod:`tests.battery.generator` go through ``stream.offline.score_log`` (the code
path of ``riskstream score``) with a model (the shipped one by default) and the packaged policy
with the model's thresholds; the result is, per archetype, how many users got an ``ml_risk``
elevated / high alert and a minors' rule alert.
"""

from __future__ import annotations

import io
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson

from stream.core.events import encode_event
from stream.core.features import FEATURE_NAMES, FEATURE_SPEC_HASH
from stream.core.policy import load_policy_config
from stream.core.scoring import OnnxScorer
from stream.offline import score_log
from tests.battery.generator import ARCHETYPES, COMPULSIVE, HEALTHY, INFORMATIONAL, MINOR, battery_events

SHIPPED: Final = Path(__file__).resolve().parents[2] / "models" / "riskstream.onnx"
NOW_MS: Final = 1_900_000_000_000


@dataclass
class Tally:
    users: int = 0
    elevated_or_high: set[str] = field(default_factory=set)
    high: set[str] = field(default_factory=set)
    rules: set[str] = field(default_factory=set)
    max_score: dict[str, float] = field(default_factory=dict)


def run(model: Path = SHIPPED, *, users: int = 10, days: int = 21, seed: int = 0,
        workdir: Path | None = None) -> dict[str, Tally]:
    events = battery_events(users, days, seed)
    data = b"\n".join(encode_event(e) for e in events) + b"\n"
    if workdir is None:
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        workdir = Path(tmp.name)
    log = workdir / "battery.jsonl"
    log.write_bytes(data)
    scorer = OnnxScorer(model, expected_spec_hash=FEATURE_SPEC_HASH, expected_feature_names=FEATURE_NAMES)
    buf = io.BytesIO()
    score_log(log, buf, policy_config=load_policy_config(None), scorer=scorer, now_ms=NOW_MS)
    out: dict[str, Tally] = defaultdict(Tally)
    for a in ARCHETYPES:
        out[a].users = users
    for line in buf.getvalue().splitlines():
        al = orjson.loads(line)
        arch = al["user_id"].rsplit("-", 1)[0]
        t = out[arch]
        if al["kind"] == "ml_risk" and al["level"] in ("elevated", "high"):
            t.elevated_or_high.add(al["user_id"])
            if al["level"] == "high":
                t.high.add(al["user_id"])
            t.max_score[al["user_id"]] = max(t.max_score.get(al["user_id"], 0.0), float(al["score"]))
        elif al["kind"].startswith("rule:"):
            t.rules.add(al["user_id"])
    return dict(out)


def table(res: dict[str, Tally]) -> str:
    lines = ["| archetype | group | users | ml_risk elevated or high | high | minors' rule alert |",
             "|---|---|---|---|---|---|"]
    for a in ARCHETYPES:
        group = ("compulsive" if a in COMPULSIVE else "healthy" if a in HEALTHY
                 else "informational" if a in INFORMATIONAL else "minor" if a in MINOR else "?")
        t = res[a]
        lines.append(f"| {a} | {group} | {t.users} | {len(t.elevated_or_high)}/{t.users} | "
                     f"{len(t.high)}/{t.users} | {len(t.rules)}/{t.users} |")
    return "\n".join(lines)


if __name__ == "__main__":
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else SHIPPED
    print(table(run(model)))
