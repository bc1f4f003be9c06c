"""Secrets never touch disk, logs or reports; binding beyond loopback is loud."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from evalproxy.cli import _warn_bind
from evalproxy.simulator import Fault, SimulatedModel

UPSTREAM_KEY = "sk-upstream-SECRET-4242"
CLIENT_KEY = "client-SECRET-7777"


async def test_known_api_keys_never_reach_disk_or_logs(
    make_proxy: Any, sim: SimulatedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a run with a known upstream key and client keys, no file under the output dir and no log line has them."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("EVALPROXY_SECRET_KEY", UPSTREAM_KEY)
    proxy = await make_proxy({
        "interceptors": [
            {"name": "system_message", "config": {"system_message": "Be brief."}},
            "reasoning", {"name": "caching", "config": {"save_requests": True}}, "endpoint", "response_stats"],
    }, api_key_name="EVALPROXY_SECRET_KEY", max_retries=0)
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY, "api-key": CLIENT_KEY}
    msgs = [{"role": "user", "content": "hello"}]
    for body in ({"model": "m", "messages": msgs, "temperature": 0},
                 {"model": "m", "messages": msgs, "stream": True}):
        resp = await proxy.post("/v1/chat/completions", json=body, headers=headers)
        assert resp.status == 200
        await resp.read()
    sim.script(Fault(status=500))
    resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": msgs, "seed": 1},
                            headers=headers)
    assert resp.status == 500
    assert sim.log[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    await proxy.close()  # the run ends: statistics, reports

    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_config.yaml" for p in files)
    leaks = [str(p) for p in files for secret in (UPSTREAM_KEY, CLIENT_KEY) if secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert UPSTREAM_KEY not in logged and CLIENT_KEY not in logged


def test_non_loopback_bind_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Binding beyond loopback prints a warning that names the address; loopback binds are quiet."""
    caplog.set_level(logging.WARNING, logger="evalproxy")
    _warn_bind("127.0.0.1")
    assert not caplog.records
    _warn_bind("0.0.0.0")
    assert "0.0.0.0" in caplog.records[0].getMessage() and caplog.records[0].levelno == logging.WARNING
