"""reasoning_replay: earlier reasoning put back into assistant messages of later turns."""

from __future__ import annotations

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.reasoning_replay import ReasoningReplayInterceptor
from tests.interceptors.units import call, chat, chunk, make, stream


class TestReasoningReplay:
    async def test_think_tags_by_content_hash(self, run: RunContext) -> None:
        """The answer's reasoning comes back as <think>R</think> before the same assistant text on the next turn."""
        ic = make(ReasoningReplayInterceptor, run)
        await call(ic, {"messages": []}, chat("The answer is 4.", reasoning_content="2+2"))
        sent, _ = await call(ic, {"messages": [{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "The answer is 4."}]})
        assert sent["messages"][1]["content"] == "<think>2+2</think>\nThe answer is 4."

    async def test_native_by_tool_call_id_and_session(self, run: RunContext) -> None:
        """native mode sets reasoning_content and reasoning, keyed by tool call id within the session."""
        ic = make(ReasoningReplayInterceptor, run, mode="native")
        call_msg = {"tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
        await call(ic, {}, chat(None, reasoning="plan", **call_msg), headers={"X-Session-Id": "s"})
        later = {"messages": [{"role": "assistant", "content": None, **call_msg}]}
        sent, _ = await call(ic, later, headers={"X-Session-Id": "s"})
        assert sent["messages"][0]["reasoning_content"] == "plan" == sent["messages"][0]["reasoning"]
        other, _ = await call(ic, later, headers={"X-Session-Id": "t"})
        assert other == later

    async def test_streamed_reasoning_is_remembered(self, run: RunContext) -> None:
        """A streamed answer's reasoning (reasoning or reasoning_content deltas) is remembered once it completes."""
        ic = make(ReasoningReplayInterceptor, run)
        _, out = await call(ic, {"stream": True}, stream(chunk(role="assistant", content=""), chunk(reasoning="abc"),
                                                         chunk(content="Final."), chunk(finish="stop")))
        assert out.stream is not None
        async for _ in out.stream:
            pass
        sent, _ = await call(ic, {"messages": [{"role": "assistant", "content": "Final."}]})
        assert sent["messages"][0]["content"] == "<think>abc</think>\nFinal."

    async def test_lru_bound(self, run: RunContext) -> None:
        """At most cache_max_entries reasonings are remembered."""
        ic = make(ReasoningReplayInterceptor, run, cache_max_entries=2)
        for i in range(3):
            await call(ic, {}, chat(f"answer {i}", reasoning_content=f"r{i}"))
        assert len(ic.memory) == 2
