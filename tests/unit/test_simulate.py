"""Behaviour simulator: determinism, contract-v1 output, session structure, calibration to docs/research.md §9."""

from __future__ import annotations

import csv
import dataclasses
import gzip
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from models.population import AGE_BANDS, CUTOFF_FEMALE, CUTOFF_MALE, draw_population, read_labels, write_labels
from models.simulate import DEFAULT_START, SimStats, hist_median, write_events
from stream.cli import main
from stream.core.events import Event, decode_message, encode_event
from stream.core.layout import SESSION_GAP_MS

NOW_MS = 2**62


def _simulate(tmp: Path, *, users: int, days: int, seed: int, workers: int = 1,
              prevalence: float = 0.13, name: str = "ev.jsonl.gz") -> tuple[Path, SimStats]:
    pop = draw_population(users, days, seed, prevalence)
    out = tmp / name
    return out, write_events(pop, out, workers=workers)


def _decode(path: Path) -> tuple[list[bytes], list[Event]]:
    lines = gzip.decompress(path.read_bytes()).splitlines()
    events: list[Event] = []
    for line in lines:
        good, bad = decode_message(line, topic_type=None, key=None, now_ms=NOW_MS)
        assert not bad, (bad, line)
        events.extend(good)
    return lines, events


def _decode_plain(path: Path) -> list[Event]:
    out: list[Event] = []
    for line in path.read_bytes().splitlines():
        good, bad = decode_message(line, topic_type=None, key=None, now_ms=NOW_MS)
        assert not bad
        out.extend(good)
    return out


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], list[Event]]:
    out, _ = _simulate(tmp_path_factory.mktemp("sim"), users=60, days=3, seed=11, workers=2)
    return _decode(out)


def test_same_seed_gives_identical_bytes_different_seed_differs(tmp_path: Path) -> None:
    a, _ = _simulate(tmp_path, users=100, days=2, seed=5, workers=1, name="a.jsonl.gz")
    b, _ = _simulate(tmp_path, users=100, days=2, seed=5, workers=2, name="b.jsonl.gz")  # 3 chunks, 2 processes
    c, _ = _simulate(tmp_path, users=100, days=2, seed=6, workers=1, name="c.jsonl.gz")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    plain, _ = _simulate(tmp_path, users=100, days=2, seed=5, workers=1, name="a.jsonl")
    assert gzip.decompress(a.read_bytes()) == plain.read_bytes()


def test_labels_are_deterministic_and_follow_the_cutoffs(tmp_path: Path) -> None:
    pop = draw_population(400, 14, 3, 0.2)
    write_labels(pop, tmp_path / "a.csv", DEFAULT_START)
    write_labels(draw_population(400, 14, 3, 0.2), tmp_path / "b.csv", DEFAULT_START)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert len(rows) == 400
    for r in rows:
        score = int(r["score"])
        assert 10 <= score <= 60
        cutoff = CUTOFF_MALE if r["sex"] == "m" else CUTOFF_FEMALE
        assert int(r["label"]) == int(score >= cutoff)
        assert r["age_band"] in AGE_BANDS
    labels = read_labels(tmp_path / "a.csv")
    assert set(labels.escalation_onset_ms) == {r["user_id"] for r in rows if r["escalating"] == "1"}


def test_every_line_is_contract_v1_and_byte_identical_to_encode_event(small_log: tuple[list[bytes], list[Event]]) -> None:
    lines, events = small_log
    assert len(lines) == len(events) > 1000
    assert all(encode_event(ev) == line for ev, line in zip(events, lines))
    assert {ev.type for ev in events} == {"click", "view"}
    assert {ev.age_band for ev in events} <= set(AGE_BANDS)
    assert len({ev.event_id for ev in events}) == len(events)


def test_sessions_are_runs_of_views_separated_by_more_than_the_gap(small_log: tuple[list[bytes], list[Event]]) -> None:
    _, events = small_log
    by_user: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        by_user[ev.user_id].append(ev)
    n_sessions = 0
    for evs in by_user.values():
        assert [e.ts_ms for e in evs] == sorted(e.ts_ms for e in evs)  # per user in time order
        sessions: dict[str, list[Event]] = defaultdict(list)
        for e in evs:
            assert e.session_id is not None
            sessions[e.session_id].append(e)
        spans = []
        for sess in sessions.values():
            views = [e for e in sess if e.type == "view"]
            assert views, "every session has at least one view"
            assert len({e.category for e in sess}) == 1  # one category per session
            for v0, v1 in zip(views, views[1:]):
                assert v1.ts_ms == v0.ts_ms + v0.dwell_ms  # back-to-back items on screen
            end = views[-1].ts_ms + views[-1].dwell_ms
            assert all(views[0].ts_ms <= c.ts_ms <= end for c in sess if c.type == "click")
            spans.append((views[0].ts_ms, end))
        spans.sort()
        for (_, e0), (s1, _) in zip(spans, spans[1:]):
            assert s1 - e0 > SESSION_GAP_MS  # the detector sees each simulated session as one session
        n_sessions += len(spans)
    assert n_sessions > 60 * 3 * 20


@pytest.fixture(scope="module")
def moderate(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, SimStats]:
    pop = draw_population(800, 14, 2024, 0.13)
    stats = write_events(pop, tmp_path_factory.mktemp("mod") / "ev.jsonl.gz", workers=2)
    return pop, stats


def test_key_statistics_match_domain_targets(moderate: tuple[object, SimStats]) -> None:
    pop, st = moderate
    y = pop.label  # type: ignore[attr-defined]
    age = pop.age  # type: ignore[attr-defined]
    adult = age == AGE_BANDS.index("adult")
    teen = np.isin(age, [AGE_BANDS.index("13-15"), AGE_BANDS.index("16-17")])
    # Ferreira 2014: ~40 % < 15 s. The compulsive checking and messaging-heavy sub-types (issue #11)
    # push the population share to ~0.47; the model card reports it as a miss against the target.
    assert 0.36 <= st.short15 / st.sessions <= 0.50
    assert np.median(st.sessions_per_day[adult]) == pytest.approx(80, abs=12)
    assert np.std(np.log(st.sessions_per_day[adult])) == pytest.approx(0.7, abs=0.12)
    assert np.median(st.minutes_per_day[adult]) == pytest.approx(180, abs=25)
    assert np.median(st.minutes_per_day[teen]) == pytest.approx(270, abs=45)
    night = st.night_share
    assert 0.02 <= np.median(night[adult & (y == 0)]) <= 0.045
    assert np.median(night[y == 1]) > 1.8 * np.median(night[y == 0])
    assert np.median(st.minutes_per_day[y == 1]) > 1.3 * np.median(st.minutes_per_day[y == 0])
    assert 100 <= st.events / 800 / 14 <= 400  # events per user-day: realistic but tractable
    assert 60 <= hist_median(st.merged_hist) <= 600  # LSApp-rule session median (s), docs/research.md §5.1: 106 s
    assert pop.escalating[y == 1].mean() == pytest.approx(0.5, abs=0.15)  # type: ignore[attr-defined]


def test_days_and_users_without_sessions_are_handled(tmp_path: Path) -> None:
    pop = draw_population(20, 5, 8, 0.13)
    sparse = dataclasses.replace(pop, sessions_day=np.where(np.arange(20) % 2 == 0, 0.3, 1e-4))
    out = tmp_path / "sparse.jsonl"
    st = write_events(sparse, out, workers=1)
    users = {ev.user_id for ev in _decode_plain(out)}
    assert st.sessions_per_day[1::2].sum() == 0 and not users & {sparse.user_id[i] for i in range(1, 20, 2)}
    assert 0 < st.sessions < 20 * 5


@pytest.mark.parametrize("prevalence", [0.07, 0.13, 0.25])
def test_prevalence_is_the_requested_one(prevalence: float) -> None:
    pop = draw_population(20_000, 28, 99, prevalence)
    assert pop.label.mean() == pytest.approx(prevalence, abs=0.01)


def test_heavy_but_healthy_and_light_but_compulsive_users_exist() -> None:
    pop = draw_population(5000, 28, 1, 0.13)
    heavy = pop.minutes_day > np.quantile(pop.minutes_day, 0.8)
    light = pop.minutes_day < np.median(pop.minutes_day)
    assert (heavy & (pop.label == 0)).sum() > 0.5 * heavy.sum()
    assert (light & (pop.label == 1)).sum() > 0.1 * (pop.label == 1).sum()


def test_cli_simulate_writes_log_and_labels_and_validates(tmp_path: Path) -> None:
    out, lab = tmp_path / "e.jsonl.gz", tmp_path / "l.csv"
    res = CliRunner().invoke(main, ["simulate", "--users", "30", "--days", "2", "--seed", "1", "--out", str(out),
                                    "--labels", str(lab), "--validate", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "share of sessions < 15 s" in res.stdout and "~0.40" in res.stdout
    assert len(read_labels(lab).label) == 30
    assert gzip.decompress(out.read_bytes()).count(b"\n") > 30 * 2 * 20


@pytest.mark.parametrize("args, message", [
    (["--prevalence", "1.5"], "prevalence"),
    (["--users", "0"], "users"),
    (["--start", "2025-13-01"], "not a date"),
])
def test_cli_simulate_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    base = ["simulate", "--users", "5", "--days", "1", "--seed", "1", "--out", str(tmp_path / "e.jsonl"),
            "--labels", str(tmp_path / "l.csv")]
    res = CliRunner().invoke(main, base + args)
    assert res.exit_code == 2
    assert message in res.output
    assert not (tmp_path / "e.jsonl").exists()


def test_cli_simulate_rejects_missing_output_directory(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["simulate", "--users", "5", "--days", "1", "--seed", "1",
                                    "--out", str(tmp_path / "nope" / "e.jsonl"), "--labels", str(tmp_path / "l.csv")])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_subtypes_tie_single_axis_extremes_to_the_label_and_hard_negatives_stay_healthy() -> None:
    from models.population import COMPULSIVE_SUBTYPES, SUBTYPES

    pop = draw_population(20_000, 28, 3, 0.13)
    name = np.asarray(SUBTYPES)[pop.subtype]
    comp = np.isin(name, COMPULSIVE_SUBTYPES)
    strong = comp & (pop.strength > 1.0)
    assert pop.label[strong].mean() > 0.6  # a strong single-axis extreme is mostly positive
    assert pop.label[~comp].mean() < 0.1
    for hard in ("heavy_longform", "weekend_gamer", "messaging_heavy", "news_reader"):
        assert (name == hard).sum() > 0.05 * len(name) and pop.label[name == hard].mean() < 0.12
    night = name == "night"
    assert np.median(pop.night_share[night & strong]) > 0.2  # night-dominant users use the night
    assert np.median(pop.sessions_day[(name == "checking") & strong]) > 1.8 * np.median(pop.sessions_day[~comp])
    # incidental quantities carry no label signal
    assert abs(np.corrcoef(np.log(pop.dwell_mult), pop.label)[0, 1]) < 0.03
