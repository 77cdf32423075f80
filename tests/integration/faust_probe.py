"""A minimal Faust worker built by riskstream's app factory, for the integration tests.

Run as ``python -m tests.integration.faust_probe --namespace NS --topic T --out FILE``: it joins the
consumer group ``<NS>.riskstream-probe``, records ``partition offset value`` of every message it
consumes into FILE (one line each, flushed), and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging

from faust import Worker

from stream.live.app import create_app
from stream.settings import load_settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    s = load_settings(kafka_bootstrap=args.bootstrap, namespace=args.namespace)
    app = create_app(s, app_id=f"{s.group_id}-probe")
    topic = app.topic(args.topic, value_serializer="raw", key_serializer="raw")
    out = open(args.out, "a", buffering=1)

    @app.agent(topic)
    async def record(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            msg = event.message
            out.write(f"{msg.partition} {msg.offset} {event.value.decode()}\n")

    logging.basicConfig(level=logging.WARNING)
    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
