"""sse: assembling a stream's events into one answer, in time linear in the stream's length."""

from __future__ import annotations

import pytest

from evalproxy.adapter.flow.sse import DONE, Event, assemble_stream


def chunk(index: int = 0, **delta: str) -> Event:
    return Event.of({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": index, "delta": delta, "finish_reason": None}]})


class TestAssembleStream:
    def test_content_and_reasoning_are_joined_per_choice(self) -> None:
        """Content and reasoning_content deltas are joined per choice, in order, with the last finish reason."""
        events = [chunk(role="assistant", content=""), chunk(reasoning_content="hm"), chunk(content="Fo"),
                  chunk(1, content="x"), chunk(content="ur"), chunk(reasoning_content="m"),
                  Event.of({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                            "usage": {"total_tokens": 3}}), DONE]
        out = assemble_stream(events)
        assert out is not None
        assert out["choices"] == [
            {"index": 0, "message": {"role": "assistant", "content": "Four", "reasoning_content": "hmm"},
             "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "x"}, "finish_reason": None}]
        assert out["usage"] == {"total_tokens": 3} and out["object"] == "chat.completion"

    def test_completions_text_is_joined(self) -> None:
        """Text-completion events are joined into one choice's text."""
        events = [Event.of({"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": t}]})
                  for t in ("a", "b", "c")]
        out = assemble_stream(events)
        assert out is not None and out["choices"] == [{"index": 0, "text": "abc", "finish_reason": None}]

    # 80 000 events of 100 characters: joined once, a fraction of a second; appended to a growing string, minutes.
    @pytest.mark.timeout(10)  # a hang guard, not a timing assertion
    def test_long_stream_is_assembled_in_linear_time(self) -> None:
        """A stream of 80 000 content and reasoning events is assembled exactly."""
        piece = "abcdefghij" * 10
        events = [chunk(content=piece, reasoning_content=piece) for _ in range(80_000)]
        out = assemble_stream(events)
        assert out is not None
        message = out["choices"][0]["message"]
        assert message["content"] == piece * 80_000 and message["reasoning_content"] == piece * 80_000
