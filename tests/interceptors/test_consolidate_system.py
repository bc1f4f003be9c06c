"""consolidate_system: every system message joined into one, first."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.consolidate_system import ConsolidateSystemInterceptor
from tests.interceptors.units import call, make


class TestConsolidateSystem:
    @pytest.mark.parametrize("messages", [
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        [{"role": "user", "content": "q"}],
    ], ids=["single-first", "none"])
    async def test_unchanged(self, run: RunContext, messages: list[Any]) -> None:
        """One system message first, or none: the request is left alone."""
        sent, _ = await call(make(ConsolidateSystemInterceptor, run), {"messages": messages})
        assert sent == {"messages": messages}

    async def test_merged_first(self, run: RunContext) -> None:
        """Several system messages (list parts too, empty ones dropped) become one at index 0, joined by the
        separator; the others keep their order."""
        sent, _ = await call(make(ConsolidateSystemInterceptor, run), {"messages": [
            {"role": "user", "content": "q"}, {"role": "system", "content": "a"},
            {"role": "system", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
            {"role": "system", "content": ""}, {"role": "assistant", "content": "r"}]})
        assert sent["messages"] == [{"role": "system", "content": "a\n\nb\nc"}, {"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "r"}]
