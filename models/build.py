"""Rebuild the shipped model and its report: ``python -m models.build``.

1. simulate the training population (seed TRAIN_SEED) and a held-out population of another seed;
2. ``riskstream train`` on the first → ``models/riskstream.onnx`` (+ ``riskstream.train.json``), the
   selection among the monotone candidates gated by the face-validity battery (``tests/battery``,
   so the build runs from a source checkout);
3. ``riskstream evaluate`` on the second → ``models/report/`` (report.md, metrics.json, PNGs), and on
   a population at prevalence 0.20 → ``models/report/prevalence-0.20/``;
4. the battery with the shipped model → ``models/report/battery.md``.

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

from models.cli import evaluate_cmd, simulate_cmd
from models.train import TrainSettings, train

# The face-validity battery's pass rule (tests/unit/test_battery.py): compulsive archetypes alerted
# for >= 90 % of users, healthy ones elevated for <= 25 % and high for <= 10 %.
COMPULSIVE_MIN: Final = 0.9
HEALTHY_MAX_ELEVATED: Final = 0.25
HEALTHY_MAX_HIGH: Final = 0.10


def battery_gate(model: Path) -> tuple[bool, dict[str, str]]:
    """Run the face-validity battery (tests/battery) on a candidate model."""
    from tests.battery.generator import COMPULSIVE, HEALTHY
    from tests.battery.run import run

    res = run(model)
    ok = True
    details: dict[str, str] = {}
    for a, t in res.items():
        if a in COMPULSIVE:
            ok &= len(t.elevated_or_high) >= COMPULSIVE_MIN * t.users
        elif a in HEALTHY:
            ok &= len(t.elevated_or_high) <= HEALTHY_MAX_ELEVATED * t.users and len(t.high) <= HEALTHY_MAX_HIGH * t.users
        else:
            continue
        details[a] = f"{len(t.elevated_or_high)}/{t.users}"
    return bool(ok), details

ROOT: Final = Path(__file__).resolve().parent.parent
TRAIN_USERS: Final = 1000
TRAIN_SEED: Final = 20250106
HOLDOUT_USERS: Final = 1000
HOLDOUT_SEED: Final = 777
DAYS: Final = 28
PREVALENCE: Final = 0.13
HOLDOUT20_USERS: Final = 1000  # 400 gave an AUC with a standard error of ~0.03
HOLDOUT20_SEED: Final = 778
PREVALENCE_HIGH: Final = 0.20
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
    for name, users, seed, prevalence in (("train", train_users, TRAIN_SEED, PREVALENCE),
                                          ("holdout", holdout_users, HOLDOUT_SEED, PREVALENCE),
                                          ("holdout20", HOLDOUT20_USERS, HOLDOUT20_SEED, PREVALENCE_HIGH)):
        ev, lab = work_dir / f"{name}-{seed}.jsonl.gz", work_dir / f"{name}-{seed}.labels.csv"
        click.echo(f"== simulate {name}: {users} users x {DAYS} days, seed {seed}", err=True)
        ctx.invoke(simulate_cmd, users=users, days=DAYS, seed=seed, prevalence=prevalence,
                   start=START, out=ev, labels_path=lab, validate=False, workers=None, progress=False)
        logs[name] = (ev, lab)
    click.echo("== train (selection gated by the face-validity battery, tests/battery)", err=True)
    res = train(logs["train"][0], logs["train"][1], out, TrainSettings(seed=0, val_fraction=0.3, workers=2),
                log=lambda m: click.echo(m, err=True), gate=battery_gate)
    for line in res.lines():
        click.echo(line)
    click.echo("== evaluate on the held-out population", err=True)
    ctx.invoke(evaluate_cmd, events=logs["holdout"][0], labels_path=logs["holdout"][1], model=out,
               report_dir=report_dir, workers=None)
    click.echo(f"== evaluate at prevalence {PREVALENCE_HIGH} (population of seed {HOLDOUT20_SEED})", err=True)
    ctx.invoke(evaluate_cmd, events=logs["holdout20"][0], labels_path=logs["holdout20"][1], model=out,
               report_dir=report_dir / "prevalence-0.20", workers=None)
    click.echo("== face-validity battery with the shipped model", err=True)
    from tests.battery.run import run, table

    battery = table(run(out))
    (report_dir / "battery.md").write_text(battery + "\n", encoding="utf-8")
    click.echo(battery)
    click.echo(f"== done in {time.perf_counter() - t0:.0f} s", err=True)


if __name__ == "__main__":
    sys.exit(main())
