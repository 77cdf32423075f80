"""``riskstream dashboard``: the live monitoring page, served by aiohttp.

* ``GET /``: the page (``static/index.html``; charts by the vendored uPlot, see ``static/vendor``).
* ``GET /api/state``: one snapshot (JSON); ``GET /api/stream``: the same snapshot as server-sent
  events, one every ``interval`` seconds.
* ``GET /api/users/{id}``: exactly what ``riskstream user show ID --json`` prints (404 when Redis
  holds no state for the user); ``GET /api/history/{id}``: the user's alerts and score points
  this dashboard has seen.

It shows personal data: bound to anything but loopback it refuses to start without a bearer token
(``RISKSTREAM_DASHBOARD_TOKEN``). With a token every request needs ``Authorization: Bearer <token>``
or the session cookie the page sets after one visit with ``?token=<token>`` (EventSource cannot send
headers). The token is never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from aiohttp import ClientSession, ClientTimeout, web

from stream.errors import ConfigError
from stream.settings import Settings, host_port
from stream.tools.dashboard.board import WorkerRates, scrape_totals

__all__ = ["Dashboard", "check_bind", "is_loopback"]

log = logging.getLogger("riskstream.dashboard")
STATIC = resources.files("stream.tools.dashboard").joinpath("static")
_COOKIE = "riskstream_dashboard"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(listen: str, token: str | None) -> tuple[str, int]:
    """(host, port) to bind; ConfigError for a bad address or a non-loopback one without a token."""
    try:
        host, port = host_port(listen)
    except ValueError as e:
        raise ConfigError(f"invalid setting dashboard_addr (RISKSTREAM_DASHBOARD_ADDR): {e}") from None
    if not is_loopback(host) and not token:
        raise ConfigError(f"the dashboard shows personal data: binding it to {host} (not loopback) needs a token "
                          "(RISKSTREAM_DASHBOARD_TOKEN)")
    if token is not None and len(token) < 16:
        raise ConfigError("invalid setting dashboard_token (RISKSTREAM_DASHBOARD_TOKEN): at least 16 characters")
    return host, port


@dataclass
class Dashboard:
    settings: Settings
    feed: Any  # StreamFeed (or a test double with snapshot() and history())
    user_report: Callable[[str], dict[str, Any] | None]
    metrics_addrs: list[str]
    token: str | None = None
    interval_s: float = 1.0
    scrape_every_s: float = 2.0
    rates: WorkerRates = field(default_factory=WorkerRates)

    # -- app ----------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_get("/api/users/{user_id:.+}", self._user)
        app.router.add_get("/api/history/{user_id:.+}", self._history)
        app.router.add_static("/static", str(STATIC), follow_symlinks=False)
        app.cleanup_ctx.append(self._scraper)
        return app

    def _cookie_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), b"riskstream-dashboard-session", hashlib.sha256).hexdigest()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is None:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else None
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return await handler(request)
        cookie = request.cookies.get(_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self._cookie_value().encode()):
            return await handler(request)
        query = request.query.get("token")
        if query is not None and request.path == "/" and hmac.compare_digest(query.encode(), self.token.encode()):
            resp = web.HTTPFound("/")  # drop the token from the address bar and history
            resp.set_cookie(_COOKIE, self._cookie_value(), httponly=True, samesite="Strict",
                            secure=request.secure)
            return resp
        return web.Response(status=401, text="401: a bearer token is needed\n",
                            headers={"WWW-Authenticate": 'Bearer realm="riskstream dashboard"'})

    # -- handlers -----------------------------------------------------------------------------------
    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(body=STATIC.joinpath("index.html").read_bytes(), content_type="text/html",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"})

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.feed.snapshot(time.time())
        snap["workers"] = self.rates.summary()
        snap["namespace"] = self.settings.namespace
        snap["now"] = time.time()
        return snap

    async def _state(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.snapshot()), content_type="application/json")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"data: " + orjson.dumps(self.snapshot()) + b"\n\n")
                await asyncio.sleep(self.interval_s)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def _user(self, request: web.Request) -> web.Response:
        uid = request.match_info["user_id"]
        report = await asyncio.get_running_loop().run_in_executor(None, self.user_report, uid)
        if report is None:
            return web.Response(status=404, body=orjson.dumps({"error": "no window state for this user"}),
                                content_type="application/json")
        return web.Response(body=orjson.dumps(report), content_type="application/json")

    async def _history(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.feed.history(request.match_info["user_id"])),
                            content_type="application/json")

    # -- the workers' /metrics ----------------------------------------------------------------------
    async def _scraper(self, _: web.Application) -> Any:
        task = asyncio.create_task(self._scrape_loop())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _scrape_loop(self) -> None:
        async with ClientSession(timeout=ClientTimeout(total=min(5.0, self.scrape_every_s * 2))) as http:
            while True:
                for addr in self.metrics_addrs:
                    try:
                        async with http.get(f"http://{addr}/metrics") as r:
                            r.raise_for_status()
                            text = await r.text()
                        self.rates.observe(addr, scrape_totals(text), time.monotonic())
                    except Exception as e:  # noqa: BLE001 - a worker down or restarting: shown on the page
                        self.rates.failed(addr, f"{type(e).__name__}: {e}"[:200])
                await asyncio.sleep(self.scrape_every_s)
