"""logging (NeMo 0.4's name): a line per request and per answer, body previews redacted."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.config import parse_config
from evalproxy.adapter.registry import resolve
from evalproxy.interceptors.traffic_log import TrafficLogInterceptor


def test_logging_is_a_registry_name() -> None:
    """The name ``logging`` resolves to the request/response logger, as in 0.4's registry."""
    resolved = resolve(parse_config({"interceptors": ["logging", "endpoint"]}))
    assert resolved.interceptors[0][0] is TrafficLogInterceptor


async def test_every_request_and_answer_is_logged(make_proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Each request logs its method, path, body keys and a redacted preview; each answer (a stream once it ended)
    its status, latency and a preview cut at preview_chars."""
    caplog.set_level("INFO", logger="evalproxy.logging")
    proxy = await make_proxy({"interceptors": [{"name": "logging", "config": {"preview_chars": 60}}, "endpoint"]})
    for stream in (False, True, False):
        r = await proxy.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "api_key": "sk-in-body-42", "stream": stream})
        await r.read()
    requests = [m for m in caplog.messages if m.startswith("request #")]
    answers = [m for m in caplog.messages if m.startswith("response #")]
    assert len(requests) == 3 and len(answers) == 3
    assert "POST /v1/chat/completions body_keys=['messages', 'api_key', 'stream']" in requests[0]
    assert "sk-in-body-42" not in caplog.text
    assert all("status=200 latency_ms=" in a for a in answers)
    assert "chat.completion" in answers[1] and "chars)" in answers[1]


async def test_the_runs_key_is_redacted_wherever_it_sits(make_proxy: Any, caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's upstream key, in a body field not named as a secret or in an answer, appears in no line of the
    logging, request_logging and response_logging interceptors."""
    monkeypatch.setenv("TRAFFIC_TEST_KEY", "sk-run-key-7731")
    caplog.set_level("INFO")
    proxy = await make_proxy({"interceptors": ["logging", "request_logging", "response_logging", "endpoint"]},
                             api_key_name="TRAFFIC_TEST_KEY")
    for stream in (False, True):
        r = await proxy.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "say sk-run-key-7731"}], "metadata": {"note": "sk-run-key-7731"},
            "stream": stream})
        await r.read()
    lines = [m for m in caplog.messages if m.startswith(("request #", "response #", "answer to #"))]
    assert len(lines) == 8, [m[:80] for m in lines]  # two requests, three loggers; logging: both ways
    assert "sk-run-key-7731" not in caplog.text
    assert sum("***" in m for m in lines) >= 2
