"""One file-mode policy: every file a run, its report and its run record write follows the user's umask."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

CONFIG = """\
interceptors:
  - name: caching
    config: {save_requests: true}
  - name: endpoint
  - name: response_stats
post_eval_hooks:
  - name: post_eval_report
    config: {report_types: [html, json]}
"""
HARNESS = """\
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/chat/completions", method="POST",
    data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
"""


async def _evalproxy(*args: str, umask: int) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "evalproxy", *args, umask=umask,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
async def test_every_file_follows_the_umask(upstream: Any, tmp_path: Path, umask: int, mode: int) -> None:
    """evalproxy run (cache, ledger, statistics, reports, results.yaml) and evalproxy report write every file with
    0666 less the umask: 0644 under 022, 0600 under 077."""
    config, harness, out = tmp_path / "config.yaml", tmp_path / "harness.py", tmp_path / "out"
    config.write_text(CONFIG)
    harness.write_text(HARNESS)
    await _evalproxy("run", "-c", str(config), "--upstream", str(upstream.make_url("/v1")), "-o", str(out),
                     "--", sys.executable, str(harness), "{proxy_url}", umask=umask)
    await _evalproxy("report", str(out), umask=umask)
    files = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    for name in ("results.yaml", "requests.jsonl", "report.html", "report.json", "eval_factory_metrics.json",
                 "adapter_config.yaml"):
        assert name in files, sorted(files)
    assert {name: oct(m) for name, m in files.items() if m != mode} == {}
