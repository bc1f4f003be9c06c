"""turn_counter: a session's turns counted, notices added, a spent budget refused."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.turn_counter import SessionBudgetExhausted, TurnCounterInterceptor
from evalproxy.simulator import SimulatedModel
from tests.interceptors.units import call, make


class TestTurnCounter:
    async def test_threshold_notices_and_budget(self, run: RunContext) -> None:
        """With max_turns 10: turns 8-9 get a notice as a last system message, 10 an urgent one, 11 is a 429."""
        ic = make(TurnCounterInterceptor, run, max_turns=10)
        body = {"messages": [{"role": "user", "content": "task A"}]}
        sent = [(await call(ic, body))[0] for _ in range(10)]
        assert sent[6] == body
        assert sent[7]["messages"][-1]["role"] == "system" and "Turn 8 of 10" in sent[7]["messages"][-1]["content"]
        assert "URGENT" in sent[9]["messages"][-1]["content"]
        with pytest.raises(SessionBudgetExhausted) as info:
            await call(ic, body)
        assert info.value.status == 429 and info.value.code == "session_budget_exhausted"
        other, _ = await call(ic, {"messages": [{"role": "user", "content": "task B"}]})
        assert other == {"messages": [{"role": "user", "content": "task B"}]}  # another session, its own count

    async def test_content_parts_without_string_text_are_skipped(self, run: RunContext) -> None:
        """A content part whose text is null (an image part, a client's placeholder) does not fail the request: the
        session is told by the parts that have text."""
        ic = make(TurnCounterInterceptor, run, max_turns=10)
        parts = [{"type": "image_url", "text": None}, {"type": "text", "text": "task A"}]
        sent, _ = await call(ic, {"messages": [{"role": "user", "content": parts}]})
        assert sent["messages"][0]["content"] == parts

    async def test_periodic_in_user_message(self, run: RunContext) -> None:
        """periodic + user_message: every interval turns the last user text gets the reminder after a blank line."""
        ic = make(TurnCounterInterceptor, run, max_turns=100, trigger="periodic", interval=2,
                  position="user_message")
        body = {"messages": [{"role": "user", "content": "go"}]}
        first, _ = await call(ic, body, headers={"X-Session-Id": "s1"})
        second, _ = await call(ic, body, headers={"X-Session-Id": "s1"})
        assert first == body
        assert second["messages"][0]["content"] == "go\n\nENVIRONMENT REMINDER: 98 turns left to complete the task."

    async def test_over_budget_is_a_429_through_the_proxy(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """The client gets an OpenAI-shaped 429 with code session_budget_exhausted; the model is not called."""
        proxy = await make_proxy({"interceptors": [{"name": "turn_counter", "config": {"max_turns": 1}}, "endpoint"]})
        body = {"messages": [{"role": "user", "content": "task"}]}
        assert (await proxy.post("/v1/chat/completions", json=body)).status == 200
        r = await proxy.post("/v1/chat/completions", json=body)
        assert r.status == 429 and (await r.json())["error"]["code"] == "session_budget_exhausted"
        assert len(sim.log) == 1

    async def test_without_budget_only_logs(self, run: RunContext) -> None:
        """No max_turns: requests pass unchanged however many turns."""
        ic = make(TurnCounterInterceptor, run)
        body = {"messages": [{"role": "user", "content": "x"}]}
        for _ in range(5):
            assert (await call(ic, body))[0] == body
