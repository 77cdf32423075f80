"""Event log readers: plain or gzip JSON lines, in lines or in blocks."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["iter_lines", "line_blocks", "open_log"]


def open_log(path: str | Path) -> IO[bytes]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"event log {p} does not exist")
    raw = p.open("rb")
    if p.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    return raw


def line_blocks(stream: IO[bytes], block_bytes: int = 8 << 20) -> Iterator[list[bytes]]:
    """The stream's lines (as read, not stripped) in lists per block: one C-level split per block
    instead of a Python step per line."""
    rest = b""
    while True:
        block = stream.read(block_bytes)
        if not block:
            break
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield lines
    if rest:
        yield [rest]


def iter_lines(stream: IO[bytes], block_bytes: int = 8 << 20) -> Iterator[bytes]:
    """Non-blank lines, stripped."""
    for lines in line_blocks(stream, block_bytes):
        for line in lines:
            line = line.strip()
            if line:
                yield line
