"""The Faust side's link to a pipeline child that dies: every call fails with how it exited.

A call can come in between the child's death and the reader finding out its exit code (the idle
timer's empty step did, in the two-pipeline SIGKILL test): it must wait for that verdict, not write
to the closed transport and crash with the event loop's error instead.
"""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from stream.errors import PipelineDiedError
from stream.live.link import ProcessLink
from stream.live.protocol import Drop


class _Proc:
    exitcode = -9

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return False


class _ClosedWriter:
    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on a closed transport")


def _link() -> ProcessLink:
    link = object.__new__(ProcessLink)  # no child: only what the calls and the reader use
    link._which = "; child 1 of 2"
    link._waiting = deque()
    link._dead = None
    link._on_death = None
    link.proc = _Proc()  # type: ignore[assignment]
    link._writer = _ClosedWriter()  # type: ignore[assignment]
    return link


def test_a_call_while_the_reader_learns_of_the_death_fails_with_the_exit_code() -> None:
    async def scenario() -> None:
        link = _link()
        reader = asyncio.StreamReader()
        link._reader_task = asyncio.ensure_future(link._read(reader))
        await asyncio.sleep(0)  # the reader waits for a reply
        fut = link._call(Drop([1]))  # the child is gone, the reader has not seen the end yet
        assert not fut.done()
        reader.feed_eof()
        with pytest.raises(PipelineDiedError, match=r"the pipeline process exited \(code -9; child 1 of 2\)"):
            await asyncio.wait_for(fut, 10)
        late = link._call(Drop([2]))  # and every call after it, at once
        with pytest.raises(PipelineDiedError, match=r"code -9"):
            await late

    asyncio.run(scenario())


def test_a_call_on_a_link_closed_without_a_reader_fails_at_once() -> None:
    async def scenario() -> None:
        link = _link()
        link._reader_task = None
        fut = link._call(Drop([1]))
        assert fut.done()
        with pytest.raises(PipelineDiedError, match="closed; child 1 of 2"):
            await fut

    asyncio.run(scenario())
