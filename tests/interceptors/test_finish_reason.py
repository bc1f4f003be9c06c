"""finish_reason: stop becomes length when the token cap was reached."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.finish_reason import FinishReasonInterceptor
from tests.interceptors.units import USAGE_AT_CAP, call, chat, make


class TestFinishReason:
    @pytest.mark.parametrize(("body", "usage", "expected"), [
        ({"max_tokens": 16}, USAGE_AT_CAP, "length"),
        ({"max_completion_tokens": 16, "max_tokens": 99}, USAGE_AT_CAP, "length"),
        ({"max_tokens": 17}, USAGE_AT_CAP, "stop"),
        ({}, USAGE_AT_CAP, "stop"),
        ({"max_tokens": 16}, {"completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 16}},
         "length"),
    ], ids=["at-cap", "completion-cap-first", "under-cap", "no-cap", "reasoning-tokens"])
    async def test_relabel(self, run: RunContext, body: dict[str, Any], usage: dict[str, Any],
                           expected: str) -> None:
        """stop becomes length when the generated tokens reach the request's cap."""
        _, out = await call(make(FinishReasonInterceptor, run), body, chat("", usage=usage))
        assert out.json["choices"][0]["finish_reason"] == expected

    async def test_empty_answer_is_logged(self, run: RunContext, caplog: pytest.LogCaptureFixture) -> None:
        """An answer without text or tool calls is logged as empty."""
        await call(make(FinishReasonInterceptor, run), {}, chat("  "))
        assert "empty answer" in caplog.text
