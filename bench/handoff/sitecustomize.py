"""A bench control, never part of the product: the riskstream worker with its detector taken out.

``bench/peer_bench.py``'s ``worker-handoff`` variant puts this directory first on the worker's
``PYTHONPATH`` and sets ``RISKSTREAM_BENCH_HANDOFF_ONLY=1``. Python imports ``sitecustomize`` at
start-up, in the worker and in its spawned pipeline process alike, and this one replaces
``Pipeline.step`` with a step that reports every message done without reading it: no decoding, no
windows, no Redis, no model. What is left is the worker's own Faust side — batching, the hand-off
over the link, the acks — so its drain rate is the ceiling any detector behind that hand-off can
reach on the machine, and ``worker ÷ worker-handoff`` is what the detection itself costs.
"""

import os

if os.environ.get("RISKSTREAM_BENCH_HANDOFF_ONLY") == "1":
    from stream.live import pipeline as _pipeline
    from stream.live.protocol import Report as _Report

    def _ack_everything(self, step):  # type: ignore[no-untyped-def]
        return _Report(done=[(topic, partition, offset) for topic, partition, offset, _, _ in step.messages])

    _pipeline.Pipeline.step = _ack_everything
