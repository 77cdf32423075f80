"""Rebuild the shipped model and its report: ``python -m models.build``.

1. simulate the training population (seed TRAIN_SEED) and a held-out population of another seed;
2. ``riskstream train`` on the first → ``models/riskstream.onnx`` (+ ``riskstream.train.json``);
3. ``riskstream evaluate`` on the second → ``models/report/`` (report.md, metrics.json, PNGs).

Generated event logs go to ``--work-dir`` (default ``.cache/model-build``, git-ignored). The result
is deterministic for the seeds except ``trained_at`` (set ``SOURCE_DATE_EPOCH`` to pin it too) and,
through it, ``model_version``.
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path
from typing import Final

import click

from models.cli import evaluate_cmd, simulate_cmd, train_cmd

ROOT: Final = Path(__file__).resolve().parent.parent
TRAIN_USERS: Final = 1000
TRAIN_SEED: Final = 20250106
HOLDOUT_USERS: Final = 1000
HOLDOUT_SEED: Final = 777
DAYS: Final = 28
PREVALENCE: Final = 0.13
START: Final = date(2025, 1, 6)  # a Monday (the simulator's default)


@click.command()
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              default=ROOT / ".cache" / "model-build", show_default=True, help="where the event logs go")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=ROOT / "models" / "riskstream.onnx", show_default=True)
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path),
              default=ROOT / "models" / "report", show_default=True)
@click.option("--train-users", type=click.IntRange(20), default=TRAIN_USERS, show_default=True)
@click.option("--holdout-users", type=click.IntRange(20), default=HOLDOUT_USERS, show_default=True)
@click.pass_context
def main(ctx: click.Context, work_dir: Path, out: Path, report_dir: Path, train_users: int,
         holdout_users: int) -> None:
    """Simulate, train and evaluate the shipped model with fixed seeds."""
    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    logs = {}
    for name, users, seed in (("train", train_users, TRAIN_SEED), ("holdout", holdout_users, HOLDOUT_SEED)):
        ev, lab = work_dir / f"{name}-{seed}.jsonl.gz", work_dir / f"{name}-{seed}.labels.csv"
        click.echo(f"== simulate {name}: {users} users x {DAYS} days, seed {seed}", err=True)
        ctx.invoke(simulate_cmd, users=users, days=DAYS, seed=seed, prevalence=PREVALENCE,
                   start=START, out=ev, labels_path=lab, validate=False, workers=None, progress=False)
        logs[name] = (ev, lab)
    click.echo("== train", err=True)
    ctx.invoke(train_cmd, events=logs["train"][0], labels_path=logs["train"][1], out=out, seed=0,
               val_fraction=0.3, workers=None)
    click.echo("== evaluate on the held-out population", err=True)
    ctx.invoke(evaluate_cmd, events=logs["holdout"][0], labels_path=logs["holdout"][1], model=out,
               report_dir=report_dir, workers=None)
    click.echo(f"== done in {time.perf_counter() - t0:.0f} s", err=True)


if __name__ == "__main__":
    sys.exit(main())
