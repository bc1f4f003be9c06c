"""payload_modifier and the logging interceptors."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.payload_modifier import PayloadModifierInterceptor
from evalproxy.simulator import SimulatedModel


class TestPayloadModifier:
    def test_remove_rename_add(self, run: RunContext) -> None:
        """Removals, then renames, then additions; other fields untouched."""
        ic = PayloadModifierInterceptor(PayloadModifierInterceptor.Params(
            params_to_remove=["logprobs"], params_to_rename={"max_tokens": "max_completion_tokens"},
            params_to_add={"temperature": 0.6, "chat_template_kwargs": {"thinking": True}}), run)
        out = ic.modify({"model": "m", "logprobs": True, "max_tokens": 9, "temperature": 0})
        assert out == {"model": "m", "max_completion_tokens": 9, "temperature": 0.6,
                       "chat_template_kwargs": {"thinking": True}}

    async def test_through_the_proxy_with_headers(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """The upstream sees the modified body and headers."""
        proxy = await make_proxy({"interceptors": [
            {"name": "payload_modifier", "config": {"params_to_remove": ["seed"], "headers_to_add": {"X-Team": "a"},
                                                    "headers_to_remove": ["X-Drop"]}},
            "endpoint"], "generate_html_report": False})
        await proxy.post("/v1/chat/completions", json={"messages": [], "seed": 3}, headers={"X-Drop": "1"})
        got = sim.log[-1]
        assert got.body == {"messages": []}
        assert got.headers["X-Team"] == "a" and "X-Drop" not in got.headers


class TestLogging:
    async def test_first_requests_and_answers_are_logged_redacted(
        self, make_proxy: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """request_logging logs max_requests requests with secrets redacted; response_logging logs answers."""
        caplog.set_level(logging.INFO, logger="evalproxy.logging")
        proxy = await make_proxy({"interceptors": [{"name": "request_logging", "config": {"max_requests": 1}},
                                                   "endpoint", "response_logging"], "generate_html_report": False})
        for i in range(2):
            r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}],
                                                               "stream": i == 1},
                                 headers={"Authorization": "Bearer sk-do-not-log"})
            await r.read()
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "evalproxy.logging"]
        requests = [ln for ln in lines if ln.startswith("request #")]
        answers = [ln for ln in lines if ln.startswith("answer to #")]
        assert len(requests) == 1 and "q0" in requests[0] and "sk-do-not-log" not in requests[0]
        assert len(answers) == 2 and "chat.completion" in answers[1]
