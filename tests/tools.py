"""Tests that need an external tool (promtool, hadolint, Chromium, kustomize, Node.js …)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def tool_missing(why: str) -> NoReturn:
    """A tool a test needs is missing: fail under CI (every check must run there), else skip."""
    if os.environ.get("CI"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)
