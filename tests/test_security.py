"""Secrets never touch disk, logs or reports; binding beyond loopback is loud."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.adapter.core.redact import REDACTED, redact_headers, safe_headers
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
                 {"model": "m", "messages": msgs, "stream": True},
                 {"model": "m", "messages": msgs, "metadata": {"note": f"key {UPSTREAM_KEY}"}}):
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


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_effective_config(tmp_path: Path) -> dict[str, Any]:
    return yaml.safe_load((tmp_path / "out" / "adapter_config.yaml").read_text())  # type: ignore[no-any-return]


URL_PASSWORD = "pw-SECRET-5151"


class TestUpstreamUrlCredentials:
    @pytest.mark.parametrize("reachable", [True, False], ids=["reachable", "closed-port"])
    async def test_credentials_never_shown(
        self, make_proxy: Any, upstream: TestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        reachable: bool,
    ) -> None:
        """The password of an upstream URL is absent from adapter_config.yaml, /health, error answers and logs."""
        caplog.set_level(logging.DEBUG)
        port = upstream.port if reachable else closed_port()
        proxy = await make_proxy(upstream_url=f"http://user:{URL_PASSWORD}@127.0.0.1:{port}/v1", max_retries=0)
        health = await proxy.get("/health")
        assert health.status == 200
        shown = [await health.text()]
        assert (await health.json())["upstream"] == f"http://{REDACTED}@127.0.0.1:{port}/v1"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        resp = await proxy.post("/v1/chat/completions", json=body)
        assert resp.status == (200 if reachable else 502)
        shown.append(await resp.text())
        if not reachable:
            error = (await resp.json())["error"]
            assert error["code"] == "upstream_unreachable" and f"127.0.0.1:{port}" in error["message"]
        await proxy.close()
        config = (tmp_path / "out" / "adapter_config.yaml").read_text()
        assert read_effective_config(tmp_path)["server"]["upstream_url"] == f"http://{REDACTED}@127.0.0.1:{port}/v1"
        shown.append(config)
        shown.extend(r.getMessage() for r in caplog.records)
        assert not [text for text in shown if URL_PASSWORD in text or "user:" in text]


    async def test_key_in_the_query_never_shown(
        self, make_proxy: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A key in the upstream URL's query (``?key=...``, as some providers take it) is shown as ``key=***`` in
        /health, error answers, adapter_config.yaml and logs."""
        caplog.set_level(logging.DEBUG)
        port = closed_port()
        proxy = await make_proxy(upstream_url=f"http://127.0.0.1:{port}/v1?key={URL_PASSWORD}", max_retries=0)
        health = await (await proxy.get("/health")).json()
        assert health["upstream"] == f"http://127.0.0.1:{port}/v1?key={REDACTED}"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        resp = await proxy.post("/v1/chat/completions", json=body)
        shown = [str(health), await resp.text()]
        await proxy.close()
        shown.append((tmp_path / "out" / "adapter_config.yaml").read_text())
        shown.extend(r.getMessage() for r in caplog.records)
        assert resp.status == 502 and not [text for text in shown if URL_PASSWORD in text]

class TestHeaderRedaction:
    SECRET_HEADERS = ("api-key", "x-api-key", "X-Auth-Token", "Ocp-Apim-Subscription-Key", "Authorization", "Cookie",
                      "Proxy-Authorization", "X-Goog-Api-Key")
    KEPT_HEADERS = ("x-ratelimit-remaining-tokens", "x-request-id", "Content-Type", "X-Ratelimit-Limit-Tokens")

    @pytest.mark.parametrize("name", SECRET_HEADERS)
    def test_secret_headers_are_dropped_and_redacted(self, name: str) -> None:
        """A credential header is dropped by safe_headers and shown as *** by redact_headers."""
        headers = [(name, "s3cret-value"), ("x-request-id", "r-1")]
        assert safe_headers(headers) == {"x-request-id": "r-1"}
        assert redact_headers(headers) == {name: REDACTED, "x-request-id": "r-1"}

    @pytest.mark.parametrize("name", KEPT_HEADERS)
    def test_ordinary_headers_are_kept(self, name: str) -> None:
        """Headers that only mention tokens or ids (rate-limit counters, request ids) keep their values."""
        headers = [(name, "123")]
        assert safe_headers(headers) == {name: "123"}
        assert redact_headers(headers) == {name: "123"}


class TestEffectiveConfigRedaction:
    async def test_reasoning_tokens_kept_and_api_key_redacted(self, make_proxy: Any, tmp_path: Path) -> None:
        """adapter_config.yaml keeps the think tokens (they are no secrets) and redacts a field named api_key."""
        proxy = await make_proxy({"interceptors": [
            {"name": "payload_modifier", "config": {"params_to_add": {"api_key": "sk-field-SECRET-31"}}},
            {"name": "reasoning", "config": {"start_reasoning_token": "<think>", "end_reasoning_token": "</think>"}},
            "endpoint",
        ]})
        await proxy.close()
        configs = {ic["name"]: ic["config"] for ic in read_effective_config(tmp_path)["adapter_config"]["interceptors"]}
        assert configs["reasoning"]["start_reasoning_token"] == "<think>"
        assert configs["reasoning"]["end_reasoning_token"] == "</think>"
        assert configs["payload_modifier"]["params_to_add"]["api_key"] == REDACTED
        assert "sk-field-SECRET-31" not in (tmp_path / "out" / "adapter_config.yaml").read_text()


class TestAdminToken:
    ADMIN_TOKEN = "admin-SECRET-9090"

    @pytest.mark.parametrize(
        ("headers", "status"),
        [
            ({}, 401),
            ({"X-Admin-Token": "wrong"}, 401),
            ({"X-Admin-Token": ADMIN_TOKEN[:-1]}, 401),
            ({"Authorization": "Bearer wrong"}, 401),
            ({"X-Admin-Token": ADMIN_TOKEN}, 200),
            ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200),
        ],
        ids=["missing", "wrong", "prefix", "wrong-bearer", "right", "right-bearer"],
    )
    async def test_run_post_hook_needs_the_token(
        self, make_proxy: Any, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], status: int
    ) -> None:
        """/adapterserver/run-post-hook answers 401 without the admin token from admin_token_name and 200 with it."""
        monkeypatch.setenv("EVALPROXY_TEST_ADMIN_TOKEN", self.ADMIN_TOKEN)
        proxy = await make_proxy(admin_token_name="EVALPROXY_TEST_ADMIN_TOKEN")
        resp = await proxy.post("/adapterserver/run-post-hook", headers=headers)
        assert resp.status == status
        body = await resp.json()
        if status == 401:
            assert body["error"]["type"] == "authentication_error"
        else:
            assert body["status"] == "success"
        assert self.ADMIN_TOKEN not in await resp.text()
