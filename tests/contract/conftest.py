"""Fixtures for the contract suites: every store implementation behind one ``store`` fixture."""

from __future__ import annotations

import itertools

import pytest

from stream.core.windows import MemoryWindowStore

_seq = itertools.count()


@pytest.fixture(params=["memory"])
def store(request):
    if request.param == "memory":
        return MemoryWindowStore()
    raise AssertionError(f"unknown store {request.param}")


@pytest.fixture
def uid() -> str:
    return f"user-{next(_seq)}"
