"""evalproxy demo, as a newcomer runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`


def test_demo_runs_twice_second_from_cache(tmp_path: Path) -> None:
    """The demo exits 0, its second run makes no upstream call, and it writes the report it names."""
    done = subprocess.run([sys.executable, "-m", "evalproxy", "demo", "-o", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "upstream calls" in done.stdout and "answers identical across runs: yes" in done.stdout
    upstream_line = next(line for line in done.stdout.splitlines() if "upstream calls" in line)
    assert upstream_line.split()[-1] == "0"
    assert f"report: {tmp_path / 'demo' / 'report.html'}" in done.stdout
    report = orjson.loads((tmp_path / "demo" / "evalproxy_report.json").read_bytes())
    assert report["pairs"] and report["statistics"]["reasoning"]["reasoning_finished_count"] > 0
