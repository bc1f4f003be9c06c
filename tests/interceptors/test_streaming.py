"""streaming: a stream coalesced into one answer for a client that did not ask for one."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.interceptors.streaming import coalesce


def chunk(**delta: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


class TestCoalesce:
    # 80 000 events of 100 characters: joined once, a fraction of a second; appended to a growing string, a minute.
    @pytest.mark.timeout(10)  # a hang guard, not a timing assertion
    def test_long_stream_is_coalesced_in_linear_time(self) -> None:
        """Content, reasoning and tool-call arguments of 80 000 events are joined exactly."""
        piece = "abcdefghij" * 10
        call = {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": piece}}
        objects = [chunk(role="assistant", content="", tool_calls=[{**call, "function": {"name": "f"}}])]
        objects += [chunk(content=piece, reasoning=piece,
                          tool_calls=[{"index": 0, "function": {"arguments": piece}}]) for _ in range(80_000)]
        message = coalesce(objects)["choices"][0]["message"]
        assert message["content"] == piece * 80_000 and message["reasoning_content"] == piece * 80_000
        assert message["tool_calls"] == [{"id": "t1", "type": "function",
                                          "function": {"name": "f", "arguments": piece * 80_000}}]

    def test_text_completion_stream(self) -> None:
        """A text-completion stream's texts are joined, with its last finish reason."""
        objects = [{"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": t}]} for t in "ab"]
        objects.append({"id": "t", "object": "text_completion",
                        "choices": [{"index": 0, "text": "c", "finish_reason": "length"}]})
        assert coalesce(objects)["choices"] == [{"index": 0, "text": "abc", "finish_reason": "length"}]
