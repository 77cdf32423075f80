"""The link to the pipeline: a child process over a socket pair, or a thread; framing and the serve loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import pickle
import select
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stream.errors import (
    PipelineDiedError,
)
from stream.live.pipeline import Pipeline
from stream.live.protocol import Call, Drop, Report, Step, TopicPartition, WireMessage
from stream.live.recording import StepRecorder
from stream.live.wiring import build_pipeline
from stream.logconfig import configure
from stream.settings import Settings

__all__ = [
    "PipelineLink",
    "ProcessLink",
    "ShardedLink",
    "ThreadLink",
    "merge_reports",
    "open_link",
    "recv_frame",
    "send_frame",
    "send_reply",
    "serve",
    "shard_of",
    "split_drop",
    "split_step",
]

# -- the link between the Faust side and its pipeline -------------------------------------------------
_PIPELINE: Pipeline | None = None


def _dispatch(pipeline: Pipeline, call: Call) -> Report | None:
    if isinstance(call, Step):
        return pipeline.step(call)
    pipeline.drop(call.partitions)
    return None


def _call_here(call: Call) -> Report | None:
    assert _PIPELINE is not None
    return _dispatch(_PIPELINE, call)


_HEADER = struct.Struct("!Q")


def send_frame(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=5)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("the other side closed the link")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> Any:
    (n,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    return pickle.loads(_recv_exactly(sock, n))


def send_reply(sock: socket.socket, ok: bool, value: Any) -> None:
    try:
        send_frame(sock, (ok, value))
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
        send_frame(sock, (False, RuntimeError(f"{type(value).__name__}: {value}")))


def serve(sock: socket.socket, settings: Settings, model_path: Path | None, loglevel: int = logging.WARNING) -> None:
    """The pipeline process: build the pipeline, then answer calls in order until the worker goes.

    State writes are deferred: a step's report (which messages are done) goes out once its write
    is settled — in the next step, after that one published its alerts, or at once when no call
    is waiting. So Redis executes a step's writes while the next step is computed.
    """
    # Ctrl-C and SIGTERM are the Faust side's to handle, also when they reach the whole process
    # group (systemd's KillMode=control-group, kill -TERM -PGID): dying first here would look like a
    # crash to the worker (exit 75). The worker closes the link when it stops; this process exits then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure(loglevel, settings.log_format)
    global _PIPELINE
    try:
        _PIPELINE = pipeline = build_pipeline(settings, model_path, defer_writes=True)
    except Exception as e:  # noqa: BLE001 - reported to the Faust side, which exits with it
        send_reply(sock, False, e)
        return
    gc.freeze()  # the long-lived objects (kernels, model, modules): full collections skip them (60 → 5 ms)
    # The reorder buffers hold many small objects (events, their positions) for up to the lateness
    # bound: with the default thresholds the collector walks them again and again (a third of the
    # pipeline's CPU per event with uploads, docs/perf-profile.md). Nothing here makes reference
    # cycles per event, so collect rarely: young objects every 100,000 allocations, all far less often.
    gc.set_threshold(100_000, 50, 100)
    send_reply(sock, True, None)
    recorder = None
    if settings.record_steps is not None:
        recorder = StepRecorder(settings.record_steps)
        logging.getLogger("riskstream.pipeline").warning(
            "recording every step to %s (RISKSTREAM_RECORD_STEPS): the file holds the raw input, user ids "
            "included; delete it once it has served", settings.record_steps)
    held: Report | None = None  # answered once its write is settled
    while True:
        try:
            if held is not None and not select.select([sock], [], [], 0)[0]:  # nothing waits: settle now
                pipeline.finish_writes()
                send_reply(sock, True, held)
                held = None
            call: Call = recv_frame(sock)
        except (EOFError, ConnectionError):
            try:  # write the unwritten state: less to replay after a restart
                pipeline.close()
            except Exception as e:  # noqa: BLE001 - nobody to tell but the log; the replay covers it
                logging.getLogger("riskstream.pipeline").warning(
                    "could not write the last checkpoint at exit (%s: %s); it is replayed at restart",
                    type(e).__name__, e)
            if recorder is not None:
                recorder.close()
            return  # the worker is gone (also when it was SIGKILLed): nothing here outlives it
        except Exception as e:  # noqa: BLE001 - settling failed: the worker exits with it
            send_reply(sock, False, e)
            held = None
            continue
        try:
            if isinstance(call, Step):
                if recorder is None:
                    report = pipeline.step(call)  # settles the previous step's write after its publish
                else:
                    c0 = time.process_time()
                    try:
                        report = pipeline.step(call)
                    finally:
                        recorder.write(call, time.process_time() - c0)
                if held is not None:
                    send_reply(sock, True, held)
                held = report
                continue
            if held is not None:
                pipeline.finish_writes()
                send_reply(sock, True, held)
                held = None
            result = _dispatch(pipeline, call)
        except Exception as e:  # noqa: BLE001
            if held is not None:  # the oldest unanswered call gets the error; the worker exits
                send_reply(sock, False, e)
                held = None
                continue
            send_reply(sock, False, e)
        else:
            send_reply(sock, True, result)


class PipelineLink:
    """How the Faust side calls its pipeline: calls are answered in the order they were sent.

    ``ProcessLink`` (the default) runs the pipeline in a child process and talks to it over a
    socket pair from the event loop itself: no helper threads in the Faust process, whose hand-offs
    would wait for the GIL. ``ThreadLink`` runs it in one thread of this process.
    """

    async def connect(self) -> None:
        """Attach to the running event loop (idempotent); before the first call."""

    def step(self, step: Step) -> asyncio.Future[Report]:
        """Send a step now; the future gets its report (or its error)."""
        return self._call(step)

    def drop(self, partitions: list[int]) -> asyncio.Future[None]:
        """Send revoked partitions now; the future is done once the pipeline dropped them."""
        return self._call(Drop(partitions))

    def _call(self, call: Call) -> asyncio.Future[Any]:
        """Send a call now; the future gets its answer: a Report for a Step, None for a Drop."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        """Whether the pipeline can still answer calls."""
        return True

    def pids(self) -> list[int | None]:
        """The pipeline child processes' pids (none: the pipeline runs in this process)."""
        return []


class ThreadLink(PipelineLink):
    def __init__(self, settings: Settings, model_path: Path | None) -> None:
        global _PIPELINE
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskstream-pipeline")
        _PIPELINE = self._pool.submit(build_pipeline, settings, model_path).result()

    def _call(self, call: Call) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._pool, _call_here, call)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProcessLink(PipelineLink):
    def __init__(self, settings: Settings, model_path: Path | None,
                 on_death: Callable[[BaseException], None] | None = None, *, name: str = "riskstream-pipeline",
                 which: str = "", wait: bool = True) -> None:
        """``which``: named in errors (one of several children); ``wait=False``: the child is started,
        :meth:`wait_ready` waits for it (several start at once)."""
        self._which = which
        ours, theirs = socket.socketpair()
        # spawn, not fork: this process already runs threads (librdkafka, Faust's consumer thread)
        self.proc = multiprocessing.get_context("spawn").Process(
            target=serve, args=(theirs, settings, model_path, logging.getLogger().getEffectiveLevel()),
            name=name, daemon=True)
        self.proc.start()
        theirs.close()
        self._sock = ours
        self._on_death = on_death
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Future[None] | None = None
        self._dead: BaseException | None = None
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait (blocking: before the event loop runs) until the pipeline is built; raise its error."""
        try:
            ok, value = recv_frame(self._sock)
        except (EOFError, ConnectionError):
            self.proc.join(5)
            raise PipelineDiedError(
                f"the pipeline process exited at start (code {self.proc.exitcode}{self._which})") from None
        if not ok:
            self.close()
            raise value

    async def connect(self) -> None:
        if self._writer is None:
            reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=2**20)
            self._reader_task = asyncio.ensure_future(self._read(reader))

    def _call(self, call: Call) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._dead is not None:
            fut.set_exception(self._dead)
            return fut
        assert self._writer is not None, "connect() first"
        if self._writer.is_closing():
            # the child hung up (killed, crashed) and the reader is still finding out how it exited:
            # it fails every waiting call with that (writing now would raise the transport's error)
            if self._reader_task is None or self._reader_task.done():
                fut.set_exception(PipelineDiedError(f"the link to the pipeline process is closed{self._which}"))
            else:
                self._waiting.append(fut)
            return fut
        self._waiting.append(fut)
        data = pickle.dumps(call, protocol=5)
        self._writer.write(_HEADER.pack(len(data)))
        self._writer.write(data)  # buffered by the transport, written as the socket takes it
        return fut

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                ok, value = pickle.loads(await reader.readexactly(n))
                fut = self._waiting.popleft()
                if not fut.done():
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 5)
            self._dead = PipelineDiedError(f"the pipeline process exited (code {self.proc.exitcode}{self._which})")
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(self._dead)
            if self._on_death is not None:
                self._on_death(self._dead)

    def alive(self) -> bool:
        return self._dead is None and self.proc.is_alive()

    def pids(self) -> list[int | None]:
        return [self.proc.pid]

    def hang_up(self) -> None:
        """Close our end of the link: the child exits once it reads the end, after its current step."""
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()

    def join(self) -> None:
        """Wait for the child to exit after :meth:`hang_up` (killed if it takes over 10 s)."""
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)

    def close(self) -> None:
        self.hang_up()
        self.join()


# -- several pipeline processes: the partitions sharded across them -----------------------------------
def shard_of(partition: int, n: int) -> int:
    """The pipeline child that owns an input partition (the same for both inputs, co-partitioned):
    its reorder buffer, fences and users (keyed to it by the producers' partitioner) live there only."""
    return partition % n


def split_step(step: Step, n: int) -> dict[int, Step]:
    """A step cut per child: each gets the messages, partitions, idle flags and commit floor entries of
    its own partitions, in their order. Children with none of these get nothing; a step that has none
    at all (e.g. an idle tick before anything was received) goes to every child."""
    if n == 1:
        return {0: step}
    messages: dict[int, list[WireMessage]] = {}
    for m in step.messages:
        messages.setdefault(m[1] % n, []).append(m)
    partitions: dict[int, list[int]] = {}
    for p in step.partitions:
        partitions.setdefault(p % n, []).append(p)
    idle: dict[int, dict[tuple[int, str], bool]] = {}
    for key, flag in step.idle.items():
        idle.setdefault(key[0] % n, {})[key] = flag
    targets = sorted(messages.keys() | partitions.keys() | idle.keys()) or list(range(n))
    floor: dict[int, dict[TopicPartition, int]] = {}
    for tp, off in step.floor.items():
        floor.setdefault(tp.partition % n, {})[tp] = off
    return {c: Step(messages.get(c, []), partitions.get(c, []), idle.get(c, {}), floor.get(c, {}),
                    step.received_at, step.now_ms, step.generation) for c in targets}


def split_drop(partitions: list[int], n: int) -> dict[int, Drop]:
    """A revocation for every child (each settles its writes and forgets its cached users, as one
    pipeline does), naming only the partitions it owns."""
    return {c: Drop([p for p in partitions if p % n == c]) for c in range(n)}


def merge_reports(reports: list[Report]) -> Report:
    """The reports of one step's parts as one: messages done, buffer states and watermarks of every
    child's partitions, the counters summed, the step's time the longest part's (they run at once).
    The model: every child loads the same file, each at its own next step; the child that reloaded
    most (reloads are counted since it started) stands for them, so a swap counts once, not once per
    child, and a child that has not reloaded yet does not show the old version again."""
    if len(reports) == 1:
        return reports[0]
    out = Report()
    for r in reports:
        out.done.extend(r.done)
        out.buffers.update(r.buffers)
        out.watermarks.update(r.watermarks)
        out.applied += r.applied
        out.late += r.late
        out.duplicates += r.duplicates
        out.dlq.update(r.dlq)
        out.alerts.update(r.alerts)
        out.latencies.extend(r.latencies)
        out.seconds = max(out.seconds, r.seconds)
        out.redis_retries += r.redis_retries
        out.forced_releases += r.forced_releases
        out.dlq_failed += r.dlq_failed
        if out.model_version is None or r.model_reloads > out.model_reloads:
            out.model_version, out.model_reloads = r.model_version, r.model_reloads
    return out


def _all_of(futures: list[asyncio.Future[Any]], merge: Callable[[list[Any]], Any]) -> asyncio.Future[Any]:
    """A future done when every one of ``futures`` is (with ``merge`` of their results), or failed as
    soon as one fails (the worker exits with that error)."""
    if len(futures) == 1:
        return futures[0]
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    left = len(futures)

    def one_done(fut: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        err = fut.exception() if not fut.cancelled() else asyncio.CancelledError()  # retrieved: no warning
        if out.done():
            return
        if err is not None:
            out.set_exception(err)
        elif left == 0:
            out.set_result(merge([f.result() for f in futures]))

    for f in futures:
        f.add_done_callback(one_done)
    return out


class ShardedLink(PipelineLink):
    """``n`` pipeline child processes (a :class:`ProcessLink` each), input partition ``p`` in child
    ``p % n`` (:func:`shard_of`). A step is split per child (:func:`split_step`) and its future is
    done when every part is, with the parts' reports merged (:func:`merge_reports`); each child
    answers its parts in the order they were sent, so merged reports come in order too. Any child
    dying ends the worker (``on_death``), as with one."""

    def __init__(self, settings: Settings, model_path: Path | None, n: int,
                 on_death: Callable[[BaseException], None] | None = None) -> None:
        self.links: list[ProcessLink] = []
        try:
            for c in range(n):  # all start at once (each warms its kernels and loads the model)
                self.links.append(ProcessLink(settings, model_path, on_death, name=f"riskstream-pipeline-{c}",
                                              which=f"; child {c} of {n}", wait=False))
            for link in self.links:
                link.wait_ready()
        except BaseException:
            self.close()
            raise

    async def connect(self) -> None:
        for link in self.links:
            await link.connect()

    def step(self, step: Step) -> asyncio.Future[Report]:
        parts = split_step(step, len(self.links))
        return _all_of([self.links[c].step(part) for c, part in parts.items()], merge_reports)

    def drop(self, partitions: list[int]) -> asyncio.Future[None]:
        parts = split_drop(partitions, len(self.links))
        return _all_of([self.links[c]._call(part) for c, part in parts.items()], lambda _: None)

    def _call(self, call: Call) -> asyncio.Future[Any]:
        if isinstance(call, Step):
            return self.step(call)
        return self.drop(call.partitions)

    def alive(self) -> bool:
        return all(link.alive() for link in self.links)

    def pids(self) -> list[int | None]:
        return [link.proc.pid for link in self.links]

    def close(self) -> None:
        for link in self.links:  # all hang up first: they finish their current steps at once
            link.hang_up()
        for link in self.links:
            link.join()


def open_link(settings: Settings, model_path: Path | None,
              on_death: Callable[[BaseException], None] | None = None) -> PipelineLink:
    """The pipeline, built and connected (its errors raised here), behind a link."""
    if not settings.detector_process:
        return ThreadLink(settings, model_path)  # one, whatever RISKSTREAM_PIPELINES says
    if settings.pipelines > 1:
        return ShardedLink(settings, model_path, settings.pipelines, on_death)
    return ProcessLink(settings, model_path, on_death)
