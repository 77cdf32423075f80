"""The ``riskstream`` command line: thin subcommands over library functions.

Errors an operator can fix print one line (``riskstream: error: …``) and exit non-zero.
"""

from __future__ import annotations

import contextlib
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import click

from stream.errors import ConfigError, RiskstreamError

__all__ = ["main"]

SHIPPED_MODEL = Path(str(resources.files("models").joinpath("riskstream.onnx")))


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"riskstream: error: {msg}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns riskstream's own errors into one line and a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, FileNotFoundError, IsADirectoryError) as e:
            _fail(str(e), 2)
        except RiskstreamError as e:
            _fail(str(e), 1)


_common = [
    click.option("--bootstrap", envvar="RISKSTREAM_KAFKA_BOOTSTRAP", default=None,
                 help="Kafka bootstrap servers [env RISKSTREAM_KAFKA_BOOTSTRAP, default 127.0.0.1:9092]"),
    click.option("--redis-url", envvar="RISKSTREAM_REDIS_URL", default=None,
                 help="Redis URL [env RISKSTREAM_REDIS_URL, default redis://127.0.0.1:6379/0]"),
    click.option("--namespace", envvar="RISKSTREAM_NAMESPACE", default=None,
                 help="prefix for topics, consumer group and Redis keys [env RISKSTREAM_NAMESPACE]"),
]


def common_options(f: Any) -> Any:
    for opt in reversed(_common):
        f = opt(f)
    return f


def settings_from(bootstrap: str | None, redis_url: str | None, namespace: str | None, **extra: Any) -> Any:
    from stream.settings import load_settings

    return load_settings(kafka_bootstrap=bootstrap, redis_url=redis_url, namespace=namespace, **extra)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="riskstream")
def main() -> None:
    """riskstream: streaming detector of compulsive platform use."""


# -- topics --------------------------------------------------------------------------------------
@main.group()
def topics() -> None:
    """Manage the Kafka topics (docs/contracts.md §1)."""


@topics.command("create")
@common_options
@click.option("--partitions", type=click.IntRange(1, 1024), default=None,
              help="partitions of the input topics [env RISKSTREAM_PARTITIONS, default 6]")
@click.option("--replication-factor", type=click.IntRange(1, 16), default=None,
              help="replication factor [env RISKSTREAM_REPLICATION_FACTOR, default 3 on a cluster of 3+ brokers, else 1]")
def topics_create(bootstrap: str | None, redis_url: str | None, namespace: str | None,
                  partitions: int | None, replication_factor: int | None) -> None:
    """Create events.clicks, events.views, risk.alerts and risk.dlq (idempotent)."""
    from stream.topics import ensure_topics

    s = settings_from(bootstrap, redis_url, namespace, partitions=partitions,
                      replication_factor=replication_factor)
    for line in ensure_topics(s):
        click.echo(line)


# -- namespaces ----------------------------------------------------------------------------------
@main.group()
def namespace() -> None:
    """Manage namespaces (prefixed topics, consumer group and Redis keys)."""


@namespace.command("delete")
@common_options
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def namespace_delete(bootstrap: str | None, redis_url: str | None, namespace: str | None, yes: bool) -> None:
    """Delete the namespace's topics and Redis keys (refuses the empty namespace)."""
    from stream.tools.namespace import delete_namespace

    s = settings_from(bootstrap, redis_url, namespace)
    if not s.namespace:
        raise ConfigError("give --namespace (or RISKSTREAM_NAMESPACE): refusing to delete the empty namespace")
    if not yes:
        click.confirm(f"delete every topic named {s.namespace}.* and every Redis key {s.namespace}:*?",
                      abort=True, err=True)
    topics, keys = delete_namespace(s)
    click.echo(f"deleted {len(topics)} topic(s) and {keys} Redis key(s) of namespace {s.namespace}")


# -- users ---------------------------------------------------------------------------------------
@main.group()
def user() -> None:
    """Look at one user's state (read-only)."""


@user.command("show")
@click.argument("user_id")
@common_options
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="score with this model [default: the shipped one]")
@click.option("--no-model", is_flag=True, help="do not score")
@click.option("--policy-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="RISKSTREAM_POLICY_CONFIG", help="alert policy TOML (for the rule profile) [default: packaged]")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of text")
def user_show(user_id: str, bootstrap: str | None, redis_url: str | None, namespace: str | None,
              model: Path | None, no_model: bool, policy_config: Path | None, as_json: bool) -> None:
    """A user's windows, current score and policy state, from Redis, in words."""
    import orjson

    from stream.core.policy import load_policy_config
    from stream.tools.user import format_report, user_report

    s = settings_from(bootstrap, redis_url, namespace)
    scorer = None if no_model else _load_scorer(model, required=False)
    report = user_report(s, user_id, scorer=scorer, policy_config=load_policy_config(policy_config))
    if report is None:
        click.echo(f"riskstream: no window state for user {user_id!r} under {s.key_prefix!r} "
                   "(unknown user, another namespace, or expired)", err=True)
        sys.exit(1)
    click.echo(orjson.dumps(report.to_json()).decode() if as_json else format_report(report))


@main.command("dashboard")
@common_options
@click.option("--listen", envvar="RISKSTREAM_DASHBOARD_ADDR", default="127.0.0.1:8090", show_default=True,
              metavar="HOST:PORT", help="where to serve the page [env RISKSTREAM_DASHBOARD_ADDR]; "
              "anything but loopback needs RISKSTREAM_DASHBOARD_TOKEN")
@click.option("--metrics", "metrics_addrs", envvar="RISKSTREAM_DASHBOARD_METRICS", default="127.0.0.1:8080",
              show_default=True, metavar="HOST:PORT[,…]",
              help="the workers' HTTP addresses (their RISKSTREAM_HTTP_ADDR) to scrape /metrics from "
              "[env RISKSTREAM_DASHBOARD_METRICS]")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="RISKSTREAM_MODEL_PATH", help="score drill-downs with this model [default: the shipped one]")
@click.option("--no-model", is_flag=True, help="do not score drill-downs")
@click.option("--policy-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="RISKSTREAM_POLICY_CONFIG", help="alert policy TOML (for the rule profile) [default: packaged]")
def dashboard(bootstrap: str | None, redis_url: str | None, namespace: str | None, listen: str,
              metrics_addrs: str, model: Path | None, no_model: bool, policy_config: Path | None) -> None:
    """Serve the live monitoring page (rates, alerts, levels, a user's timeline)."""
    import logging
    import os

    from stream.core.policy import load_policy_config
    from stream.tools.dashboard import check_bind, run_dashboard
    from stream.tools.user import user_report

    token = os.environ.get("RISKSTREAM_DASHBOARD_TOKEN") or None
    check_bind(listen, token)  # before anything slow: a bad address or a missing token is one line
    addrs = [a.strip() for a in metrics_addrs.split(",") if a.strip()]
    for a in addrs:
        try:
            from stream.settings import host_port

            host_port(a)
        except ValueError as e:
            raise ConfigError(f"invalid setting dashboard_metrics (RISKSTREAM_DASHBOARD_METRICS): {e}") from None
    s = settings_from(bootstrap, redis_url, namespace)
    scorer = None if no_model else _load_scorer(model, required=False)
    cfg = load_policy_config(policy_config)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def report(uid: str) -> dict[str, Any] | None:
        r = user_report(s, uid, scorer=scorer, policy_config=cfg)
        return None if r is None else r.to_json()

    run_dashboard(s, listen=listen, token=token, metrics_addrs=addrs, user_report=report,
                  announce=lambda line: click.echo(line, err=True))


# -- models --------------------------------------------------------------------------------------
def _load_scorer(model: Path | None, *, required: bool) -> Any:
    from stream.core.scoring import load_scorer

    path = model or (SHIPPED_MODEL if SHIPPED_MODEL.exists() else None)
    if path is None:
        if required:
            raise ConfigError(f"no model given and no shipped model at {SHIPPED_MODEL}")
        click.echo("riskstream: note: no model (none given, none shipped): rules only", err=True)
        return None
    return load_scorer(path)


@main.command("check-model")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path), required=False)
def check_model(model: Path | None) -> None:
    """Validate a model file against the running feature spec and print its metadata."""
    scorer = _load_scorer(model, required=True)
    info = scorer.info
    click.echo(f"model: {info.path}\nversion: {info.model_version}\ntrained_at: {info.trained_at}\n"
               f"feature_spec_hash: {info.feature_spec_hash} (matches)\n"
               f"features: {len(info.feature_names)}\nthresholds: {info.thresholds}\nsha256: {info.sha256}")


# -- offline scoring -----------------------------------------------------------------------------
@main.command("score")
@click.argument("events", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX model [default: the shipped models/riskstream.onnx]")
@click.option("--no-model", is_flag=True, help="rules only, no ML scoring")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="alerts JSONL [default: stdout]")
@click.option("--levels-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write each user's final levels (risk.levels values, JSONL; docs/contracts.md §4a)")
@click.option("--policy-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="RISKSTREAM_POLICY_CONFIG", help="alert policy TOML [default: packaged]")
@click.option("--progress/--no-progress", default=None, help="progress on stderr [default: if a tty]")
def score(events: Path, model: Path | None, no_model: bool, out: Path | None, levels_out: Path | None,
          policy_config: Path | None, progress: bool | None) -> None:
    """Score an event log (JSONL, optionally .gz) offline and write contract-v1 alerts (docs/contracts.md §3)."""
    from stream.core.policy import load_policy_config
    from stream.offline import score_log

    cfg = load_policy_config(policy_config)
    scorer = None if no_model else _load_scorer(model, required=False)
    show = sys.stderr.isatty() if progress is None else progress
    with contextlib.ExitStack() as stack:
        lv = None if levels_out is None else stack.enter_context(levels_out.open("wb"))
        if out is None:
            summary = score_log(events, sys.stdout.buffer, policy_config=cfg, scorer=scorer,
                                progress=show, levels_out=lv)
            sys.stdout.flush()
        else:
            with out.open("wb") as f:
                summary = score_log(events, f, policy_config=cfg, scorer=scorer,
                                    progress=show, levels_out=lv)
    for line in summary.lines_out():
        click.echo(line, err=True)


# -- live ----------------------------------------------------------------------------------------
@main.command("worker")
@common_options
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="RISKSTREAM_MODEL_PATH", help="ONNX model [default: the shipped one]")
@click.option("--no-model", is_flag=True, help="rules only, no ML scoring")
@click.option("--policy-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="RISKSTREAM_POLICY_CONFIG", help="alert policy TOML [default: packaged]")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None,
              help="max messages per micro-batch [env RISKSTREAM_BATCH_SIZE, default 2000]")
@click.option("--batch-wait", "batch_wait_s", type=click.FloatRange(0.001, 60), default=None,
              help="max seconds to fill a micro-batch [env RISKSTREAM_BATCH_WAIT_S, default 0.2]")
@click.option("--group", "consumer_group", default=None,
              help="consumer group (prefixed by the namespace) [env RISKSTREAM_CONSUMER_GROUP]")
@click.option("--lateness-ms", type=click.IntRange(0, 3_600_000), default=None,
              help="lateness bound L [env RISKSTREAM_LATENESS_MS, default 120000]")
@click.option("--idle-ms", type=click.IntRange(0, 3_600_000), default=None,
              help="idle time before a caught-up input stops holding the watermark [default 2000]")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="serve Prometheus metrics on 127.0.0.1:PORT (0 = off)")
@click.option("--http-addr", default=None, metavar="HOST:PORT",
              help="serve /livez, /readyz and /metrics there [env RISKSTREAM_HTTP_ADDR; off by default]")
@click.option("--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="text or JSON lines, for every process of the worker [env RISKSTREAM_LOG_FORMAT, default text]")
def worker(bootstrap: str | None, redis_url: str | None, namespace: str | None, model: Path | None,
           no_model: bool, policy_config: Path | None, batch_size: int | None, batch_wait_s: float | None,
           consumer_group: str | None, lateness_ms: int | None, idle_ms: int | None,
           metrics_port: int | None, http_addr: str | None, loglevel: str, log_format: str | None) -> None:
    """Run the streaming worker (Faust agent, Redis windows, alerts and DLQ on Kafka)."""
    import json
    import logging

    from stream.live.worker import run_worker
    from stream.logconfig import configure

    s = settings_from(bootstrap, redis_url, namespace, model_path=model, policy_config=policy_config,
                      batch_size=batch_size, batch_wait_s=batch_wait_s, consumer_group=consumer_group,
                      lateness_ms=lateness_ms, idle_ms=idle_ms, metrics_port=metrics_port, http_addr=http_addr,
                      log_format=log_format)
    configure(loglevel.upper(), s.log_format)
    scorer = None if no_model else _load_scorer(s.model_path, required=False)
    log = logging.getLogger("riskstream.worker")
    log.warning("settings %s", json.dumps(s.masked(), default=str))  # what runs, whatever the level
    if scorer is not None:
        log.warning("model %s version %s", scorer.info.path, scorer.info.model_version)
    run_worker(s, None if scorer is None else Path(scorer.info.path), loglevel=loglevel.upper())


@main.command("replay")
@click.argument("events", type=click.Path(dir_okay=False, path_type=Path))
@common_options
@click.option("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
@click.option("--speed", type=float, default=None, help="replay at X times the event-time speed")
@click.option("--envelope", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="up to N events of one user per message (batch envelopes, docs/contracts.md §2)")
@click.option("--skew", type=click.Choice(["views-first", "clicks-first"]), default=None,
              help="publish all of one type before the other (parity tests)")
@click.option("--sort", is_flag=True, help="publish in event-time order (reads the whole log first)")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: if a tty]")
def replay_cmd(events: Path, bootstrap: str | None, redis_url: str | None, namespace: str | None,
               rate: float | None, speed: float | None, envelope: int, skew: str | None, sort: bool,
               progress: bool | None) -> None:
    """Publish an event log (JSONL, optionally .gz) into the input topics, keyed by user."""
    from stream.tools.replay import parse_types, replay

    s = settings_from(bootstrap, redis_url, namespace)
    show = sys.stderr.isatty() if progress is None else progress
    for types in parse_types(skew):
        summary = replay(events, s, rate=rate, speed=speed, envelope=envelope, types=types, progress=show,
                         sort=sort, warn=lambda line: click.echo(line, err=True))
        for line in summary.lines_out():
            click.echo(line, err=True)


@main.group()
def alerts() -> None:
    """Read the alert topic."""


def _tail_filter(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> frozenset[str] | None:
    from stream.tools.tail import parse_kinds, parse_levels

    return parse_kinds(values) if param.name == "kinds" else parse_levels(values)


@alerts.command("tail")
@common_options
@click.option("--from-beginning", is_flag=True, help="start at the oldest retained alert")
@click.option("--user", default=None, help="only this user's alerts")
@click.option("--json", "as_json", is_flag=True, help="pass the JSON lines through")
@click.option("--max", "max_alerts", type=click.IntRange(1), default=None, help="stop after N alerts")
@click.option("--idle-timeout", type=float, default=None, help="stop after S seconds without an alert")
@click.option("--kind", "kinds", multiple=True, metavar="KIND[,KIND]", callback=_tail_filter,
              help="only these kinds: ml_risk, daily_cap, curfew, continuous_use (repeatable)")
@click.option("--level", "levels", multiple=True, metavar="LEVEL[,LEVEL]", callback=_tail_filter,
              help="only these levels: elevated, high, cleared (repeatable)")
@click.option("--color/--no-color", default=None, help="colour levels [default: if stdout is a terminal]")
def alerts_tail(bootstrap: str | None, redis_url: str | None, namespace: str | None, from_beginning: bool,
                user: str | None, as_json: bool, max_alerts: int | None, idle_timeout: float | None,
                kinds: frozenset[str] | None, levels: frozenset[str] | None, color: bool | None) -> None:
    """Follow risk.alerts (Ctrl-C stops)."""
    from stream.tools.tail import tail

    use_color = sys.stdout.isatty() if color is None else color
    s = settings_from(bootstrap, redis_url, namespace)
    try:
        tail(s, lambda line: click.echo(line, color=use_color), from_beginning=from_beginning, user=user,
             as_json=as_json, max_alerts=max_alerts, idle_timeout_s=idle_timeout, kinds=kinds,
             levels=levels, color=use_color and not as_json)
    except KeyboardInterrupt:
        pass


def _register_optional() -> None:
    """Training commands live in models/ (they need the train extra only when they run)."""
    import importlib.util

    if importlib.util.find_spec("models.cli") is None:
        return
    from models.cli import commands

    for cmd in commands():
        main.add_command(cmd)


_register_optional()


if __name__ == "__main__":  # pragma: no cover
    main()
