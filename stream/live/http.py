"""The worker's HTTP endpoints for operators and orchestrators (``RISKSTREAM_HTTP_ADDR``).

* ``GET /livez``: 200 while the process serves and its pipeline is alive (a dead pipeline ends the
  process anyway, with 75); the answer itself shows that the event loop is not stuck.
* ``GET /readyz``: 200 once the worker has joined its group with partitions assigned and Kafka and
  Redis answered recently; 503 with a JSON body naming the failing checks otherwise.
* ``GET /metrics``: the Prometheus text of the worker's registry.

Served by aiohttp (Faust's own web stack) on the worker's event loop; every check reads state the
worker keeps anyway, so a probe costs no call to Kafka or Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Check", "HealthServer", "recent"]

Check = Callable[[], "tuple[bool, str]"]
"""A readiness check: (ok, what it saw, in words)."""


@dataclass(frozen=True, slots=True)
class HealthServer:
    """The endpoints; ``start`` binds them on the running loop and returns the runner to stop."""

    host: str
    port: int
    registry: CollectorRegistry
    alive: Callable[[], bool]
    checks: dict[str, Check]

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        return runner

    async def _livez(self, _: web.Request) -> web.Response:
        ok = self.alive()
        return _json(200 if ok else 503, {"live": ok})

    async def _readyz(self, _: web.Request) -> web.Response:
        results = {name: check() for name, check in self.checks.items()}
        ready = all(ok for ok, _ in results.values())
        body: dict[str, Any] = {"ready": ready,
                                "checks": {n: {"ok": ok, "detail": d} for n, (ok, d) in results.items()}}
        if not ready:
            body["reason"] = "; ".join(f"{n}: {d}" for n, (ok, d) in results.items() if not ok)
        return _json(200 if ready else 503, body)

    async def _metrics(self, _: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def recent(at: Callable[[], float], within_s: float, what: str) -> Check:
    """A check that passes while ``at()`` (a monotonic time of the last good answer) is recent."""
    def check() -> tuple[bool, str]:
        age = time.monotonic() - at()
        ok = age <= within_s
        return ok, f"{what} answered {age:.0f} s ago" + ("" if ok else f" (more than {within_s:.0f} s)")
    return check
