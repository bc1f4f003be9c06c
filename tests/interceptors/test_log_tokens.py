"""log_tokens: an answer's token usage in the log."""

from __future__ import annotations

import logging

import pytest

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.log_tokens import LogTokensInterceptor
from tests.interceptors.units import USAGE_AT_CAP, call, chat, make


class TestLogTokens:
    async def test_logs_usage(self, run: RunContext, caplog: pytest.LogCaptureFixture) -> None:
        """One line with prompt, completion and total tokens."""
        caplog.set_level(logging.INFO, logger="evalproxy.log_tokens")
        await call(make(LogTokensInterceptor, run), {}, chat("a", usage=USAGE_AT_CAP))
        assert "prompt=3 completion=16 total=19" in caplog.text
