"""``riskstream simulate | train | evaluate``: thin click commands over models/ library functions.

``stream/cli.py`` registers :func:`commands` when this module exists. Nothing heavy is imported at
module import (numpy, scikit-learn, matplotlib load inside the commands), so ``riskstream --help``
stays fast and works without the ``train`` extra.
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import click

SHIPPED_MODEL = Path(__file__).resolve().parent / "riskstream.onnx"


def _echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def _parse_date(ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date YYYY-MM-DD") from None


def _workers(n: int | None) -> int:
    import os

    return n if n is not None else min(2, os.cpu_count() or 1)


# -- simulate --------------------------------------------------------------------------------------
@click.command("simulate")
@click.option("--users", type=click.IntRange(1, 10_000_000), required=True, help="population size")
@click.option("--days", type=click.IntRange(1, 366), required=True, help="days to simulate")
@click.option("--seed", type=int, required=True, help="random seed (same seed, same bytes)")
@click.option("--prevalence", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.13,
              show_default=True, help="share of users with a positive label")
@click.option("--start", callback=_parse_date, default="2025-01-06", show_default=True,
              help="first local day (YYYY-MM-DD)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="events JSONL (gzip when it ends in .gz)")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="labels CSV (label, score, latent traits)")
@click.option("--validate", is_flag=True, help="print simulated statistics beside the docs/research.md §9.3 targets")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="processes [default: 2 or #cpus]")
@click.option("--progress/--no-progress", default=None, help="progress on stderr [default: if a tty]")
def simulate_cmd(users: int, days: int, seed: int, prevalence: float, start: date, out: Path,
                 labels_path: Path, validate: bool, workers: int | None, progress: bool | None) -> None:
    """Simulate a population's click/view events (contract v1) and its labels."""
    from tqdm import tqdm

    from models.population import draw_population, write_labels
    from models.simulate import write_events
    from models.validation import validation_table

    for p in (out, labels_path):
        if not p.parent.is_dir():
            raise click.BadParameter(f"directory {p.parent} does not exist", param_hint=f"'{p}'")
    t0 = time.perf_counter()
    pop = draw_population(users, days, seed, prevalence)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=users, desc="simulate", unit=" users", disable=not show, leave=False) as bar:
        stats = write_events(pop, out, start=start, workers=_workers(workers), progress=bar.update)
    write_labels(pop, labels_path, start)
    dt = time.perf_counter() - t0
    size = out.stat().st_size
    _echo_err(f"wrote {stats.events:,} events ({stats.events / users / days:.0f} per user-day) of {users} users "
              f"x {days} days to {out} ({size / 1e6:.1f} MB) and {labels_path} in {dt:.1f} s; "
              f"prevalence {pop.label.mean():.3f}")
    if validate:
        click.echo(validation_table(pop, stats, start))


# -- train -----------------------------------------------------------------------------------------
@click.command("train")
@click.option("--events", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="training events JSONL(.gz)")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="labels CSV with user_id and label")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="ONNX model to write (a <name>.train.json summary is written beside it)")
@click.option("--seed", type=int, default=0, show_default=True, help="split and model seed")
@click.option("--val-fraction", type=click.FloatRange(0.1, 0.5), default=0.3, show_default=True,
              help="share of users held out to compare the candidate models")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="detector processes [default: 2]")
def train_cmd(events: Path, labels_path: Path, out: Path, seed: int, val_fraction: float,
              workers: int | None) -> None:
    """Train the risk classifier on detector features and export it to ONNX."""
    from models.train import TrainSettings, train

    if out.suffix != ".onnx":
        raise click.BadParameter("the model file must end in .onnx", param_hint="'--out'")
    if not out.parent.is_dir():
        raise click.BadParameter(f"directory {out.parent} does not exist", param_hint="'--out'")
    res = train(events, labels_path, out, TrainSettings(seed=seed, val_fraction=val_fraction,
                                                        workers=_workers(workers)), log=_echo_err)
    for line in res.lines():
        click.echo(line)


# -- evaluate --------------------------------------------------------------------------------------
@click.command("evaluate")
@click.option("--events", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="held-out events JSONL(.gz)")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="labels CSV with user_id and label")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX model [default: the shipped models/riskstream.onnx]")
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write report.md, metrics.json and PNG plots here")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="detector processes [default: 2]")
def evaluate_cmd(events: Path, labels_path: Path, model: Path | None, report_dir: Path | None,
                 workers: int | None) -> None:
    """Evaluate a model on a labelled population: metrics, volume baseline, stream figures."""
    from models.evaluate import evaluate

    path = model if model is not None else SHIPPED_MODEL
    if not path.exists():
        raise click.BadParameter(f"model {path} does not exist", param_hint="'--model'")
    res = evaluate(events, labels_path, path, report_dir=report_dir, workers=_workers(workers), log=_echo_err)
    for line in res.lines():
        click.echo(line)
    if report_dir is not None:
        click.echo(f"report: {report_dir / 'report.md'}")


def commands() -> list[click.Command]:
    """The commands stream/cli.py adds to ``riskstream``."""
    cmds: list[Any] = [simulate_cmd, train_cmd, evaluate_cmd]
    return cmds
