"""``riskstream dashboard``: a live monitoring page (aiohttp, server-sent events, vendored uPlot)."""

from __future__ import annotations

from stream.tools.dashboard.board import ActiveUsers, AlertLog, LevelsBoard, WorkerRates, scrape_totals
from stream.tools.dashboard.server import Dashboard, check_bind, is_loopback

__all__ = ["ActiveUsers", "AlertLog", "Dashboard", "LevelsBoard", "WorkerRates", "check_bind", "is_loopback",
           "run_dashboard", "scrape_totals"]


def run_dashboard(settings: object, *, listen: str, token: str | None, metrics_addrs: list[str],
                  user_report: object, announce: object = print) -> None:
    """Serve until interrupted (blocking)."""
    from aiohttp import web

    from stream.tools.dashboard.feeds import StreamFeed

    host, port = check_bind(listen, token)
    feed = StreamFeed(settings)  # type: ignore[arg-type]
    feed.start()
    dash = Dashboard(settings, feed, user_report, metrics_addrs, token=token)  # type: ignore[arg-type]
    shown = f"[{host}]" if ":" in host else host
    announce(f"dashboard on http://{shown}:{port}/" + ("  (open it once with ?token=<the token>)" if token else ""))  # type: ignore[operator]
    try:
        web.run_app(dash.app(), host=host, port=port, print=None, access_log=None, handle_signals=True)
    finally:
        feed.stop()
