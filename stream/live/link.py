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
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stream.errors import (
    PipelineDiedError,
)
from stream.live.pipeline import Pipeline
from stream.live.protocol import Report, Step
from stream.live.wiring import build_pipeline
from stream.settings import Settings

# -- the link between the Faust side and its pipeline -------------------------------------------------
_PIPELINE: Pipeline | None = None


def _op_step(step: Step) -> Report:
    assert _PIPELINE is not None
    return _PIPELINE.step(step)


def _op_drop(partitions: list[int]) -> None:
    assert _PIPELINE is not None
    _PIPELINE.drop(partitions)


_OPS: dict[str, Callable[[Any], Any]] = {"step": _op_step, "drop": _op_drop}
_HEADER = struct.Struct("!Q")


def _send(sock: socket.socket, obj: Any) -> None:
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


def _recv(sock: socket.socket) -> Any:
    (n,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    return pickle.loads(_recv_exactly(sock, n))


def _reply(sock: socket.socket, ok: bool, value: Any) -> None:
    try:
        _send(sock, (ok, value))
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
        _send(sock, (False, RuntimeError(f"{type(value).__name__}: {value}")))


def serve(sock: socket.socket, settings: Settings, model_path: Path | None, loglevel: int = logging.WARNING) -> None:
    """The pipeline process: build the pipeline, then answer calls in order until the worker goes.

    State writes are deferred: a step's report (which messages are done) goes out once its write
    is settled — in the next step, after that one published its alerts, or at once when no call
    is waiting. So Redis executes a step's writes while the next step is computed.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the Faust side's to handle
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    global _PIPELINE
    try:
        _PIPELINE = pipeline = build_pipeline(settings, model_path, defer_writes=True)
    except Exception as e:  # noqa: BLE001 - reported to the Faust side, which exits with it
        _reply(sock, False, e)
        return
    gc.freeze()  # the long-lived objects (kernels, model, modules): full collections skip them (60 → 5 ms)
    _reply(sock, True, None)
    held: Report | None = None  # answered once its write is settled
    while True:
        try:
            if held is not None and not select.select([sock], [], [], 0)[0]:  # nothing waits: settle now
                pipeline.finish_writes()
                _reply(sock, True, held)
                held = None
            op, arg = _recv(sock)
        except (EOFError, ConnectionError):
            return  # the worker is gone (also when it was SIGKILLed): nothing here outlives it
        except Exception as e:  # noqa: BLE001 - settling failed: the worker exits with it
            _reply(sock, False, e)
            held = None
            continue
        try:
            if op == "step":
                report = pipeline.step(arg)  # settles the previous step's write after its publish
                if held is not None:
                    _reply(sock, True, held)
                held = report
                continue
            if held is not None:
                pipeline.finish_writes()
                _reply(sock, True, held)
                held = None
            result = _OPS[op](arg)
        except Exception as e:  # noqa: BLE001
            if held is not None:  # the oldest unanswered call gets the error; the worker exits
                _reply(sock, False, e)
                held = None
                continue
            _reply(sock, False, e)
        else:
            _reply(sock, True, result)


class PipelineLink:
    """How the Faust side calls its pipeline: calls are answered in the order they were sent.

    ``ProcessLink`` (the default) runs the pipeline in a child process and talks to it over a
    socket pair from the event loop itself: no helper threads in the Faust process, whose hand-offs
    would wait for the GIL. ``ThreadLink`` runs it in one thread of this process.
    """

    async def connect(self) -> None:
        """Attach to the running event loop (idempotent); before the first ``send``."""

    def send(self, op: str, arg: Any) -> asyncio.Future[Any]:
        """Send a call now; the future gets its answer (or its error)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ThreadLink(PipelineLink):
    def __init__(self, settings: Settings, model_path: Path | None) -> None:
        global _PIPELINE
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riskstream-pipeline")
        _PIPELINE = self._pool.submit(build_pipeline, settings, model_path).result()

    def send(self, op: str, arg: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._pool, _OPS[op], arg)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ProcessLink(PipelineLink):
    def __init__(self, settings: Settings, model_path: Path | None,
                 on_death: Callable[[BaseException], None] | None = None) -> None:
        ours, theirs = socket.socketpair()
        # spawn, not fork: this process already runs threads (librdkafka, Faust's consumer thread)
        self.proc = multiprocessing.get_context("spawn").Process(
            target=serve, args=(theirs, settings, model_path, logging.getLogger().getEffectiveLevel()),
            name="riskstream-pipeline", daemon=True)
        self.proc.start()
        theirs.close()
        self._sock = ours
        self._on_death = on_death
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Future[None] | None = None
        self._dead: BaseException | None = None
        try:
            ok, value = _recv(ours)  # blocking: before the event loop runs
        except (EOFError, ConnectionError):
            self.proc.join(5)
            raise PipelineDiedError(f"the pipeline process exited at start (code {self.proc.exitcode})") from None
        if not ok:
            self.close()
            raise value

    async def connect(self) -> None:
        if self._writer is None:
            reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=2**20)
            self._reader_task = asyncio.ensure_future(self._read(reader))

    def send(self, op: str, arg: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._dead is not None:
            fut.set_exception(self._dead)
            return fut
        assert self._writer is not None, "connect() first"
        self._waiting.append(fut)
        data = pickle.dumps((op, arg), protocol=5)
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
            self._dead = PipelineDiedError(f"the pipeline process exited (code {self.proc.exitcode})")
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(self._dead)
            if self._on_death is not None:
                self._on_death(self._dead)

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()
        self.proc.join(10)  # it exits when it reads the end of the link, after its current step
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def open_link(settings: Settings, model_path: Path | None,
              on_death: Callable[[BaseException], None] | None = None) -> PipelineLink:
    """The pipeline, built and connected (its errors raised here), behind a link."""
    if settings.detector_process:
        return ProcessLink(settings, model_path, on_death)
    return ThreadLink(settings, model_path)
