"""shape: a stream assembled into one answer, and an answer read one way (text, tool calls, reasoning)."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.flow.shape import (
    answer_text,
    assemble_stream,
    content_text,
    first_choice,
    split_reasoning,
    tool_call_text,
    tool_calls,
    usage_of,
)
from evalproxy.adapter.flow.sse import DONE, Event


def chunk(index: int = 0, **delta: Any) -> Event:
    return Event.of({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": index, "delta": delta, "finish_reason": None}]})


def call_delta(k: int, **fields: Any) -> dict[str, Any]:
    return {"index": k, **fields}


ARGS = ['{"city": "Paris", "days": 3, "units": "metric"}', '{"query": "weather in Paris, then in Lyon"}']


def fragmented_tool_calls() -> list[Event]:
    """Two tool calls, each named in its first delta, their arguments cut in 4-character pieces and interleaved."""
    events = [chunk(role="assistant", content=None)]
    names = ["get_weather", "search"]
    for k, name in enumerate(names):
        events.append(chunk(tool_calls=[call_delta(k, id=f"call_{k}", type="function",
                                                   function={"name": name, "arguments": ""})]))
    pieces = [[a[i:i + 4] for i in range(0, len(a), 4)] for a in ARGS]
    for i in range(max(map(len, pieces))):
        for k in (0, 1):
            if i < len(pieces[k]):
                events.append(chunk(tool_calls=[call_delta(k, function={"arguments": pieces[k][i]})]))
    events.append(Event.of({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}))
    return [*events, DONE]


class TestAssembleStream:
    def test_content_and_reasoning_are_joined_per_choice(self) -> None:
        """Content and reasoning deltas are joined per choice, in order, with the last finish reason."""
        events = [chunk(role="assistant", content=""), chunk(reasoning_content="hm"), chunk(content="Fo"),
                  chunk(1, content="x"), chunk(content="ur"), chunk(reasoning="m"),
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

    def test_tool_calls_are_merged_by_index(self) -> None:
        """Interleaved tool-call deltas become one call per index: name kept, id and type kept, arguments joined."""
        events = fragmented_tool_calls()
        assert len(events) > 25
        out = assemble_stream(events)
        assert out is not None
        assert out["choices"][0]["finish_reason"] == "tool_calls"
        assert out["choices"][0]["message"]["tool_calls"] == [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": ARGS[0]}},
            {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": ARGS[1]}}]

    def test_bytes_events_and_objects_assemble_alike(self) -> None:
        """The events, their bytes and their parsed objects give the same answer."""
        events = fragmented_tool_calls()
        objects = [e.json for e in events if e.json is not None]
        assert assemble_stream(events) == assemble_stream([e.raw for e in events]) == assemble_stream(objects)

    def test_a_repeated_name_is_not_doubled(self) -> None:
        """A server that sends the call's name in every delta still gives the name once."""
        events = [chunk(tool_calls=[call_delta(0, function={"name": "f", "arguments": a})]) for a in ("{", "}")]
        out = assemble_stream(events)
        assert out is not None
        assert out["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}

    def test_nothing_to_assemble(self) -> None:
        """A stream without a JSON object assembles to None."""
        assert assemble_stream([DONE, b": keep-alive\n\n"]) is None

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


class TestReading:
    @pytest.mark.parametrize(("content", "kwargs", "text"), [
        ("plain", {}, "plain"),
        (None, {}, ""),
        ([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}], {}, "ab"),
        ([{"type": "text", "text": "a"}, {"type": "image_url"}], {"sep": "\n", "other_parts": True},
         "a\n[image_url]"),
    ])
    def test_content_text(self, content: Any, kwargs: dict[str, Any], text: str) -> None:
        """A content's text: the string, or its text parts joined (other parts shown by type when asked)."""
        assert content_text(content, **kwargs) == text

    def test_answer_text_shows_whole_tool_calls(self) -> None:
        """An answer's text is its content, then each tool call as name(arguments), without call ids."""
        answer = assemble_stream(fragmented_tool_calls())
        assert answer_text(answer) == f"get_weather({ARGS[0]})\nsearch({ARGS[1]})"
        choice = first_choice(answer)
        assert [tool_call_text(c) for c in tool_calls(choice)] == [f"get_weather({ARGS[0]})", f"search({ARGS[1]})"]

    @pytest.mark.parametrize(("answer", "text"), [
        ({"choices": [{"message": {"content": "4"}}], "usage": {"total_tokens": 1}}, "4"),
        ({"choices": [{"message": {"content": None}}]}, None),
        ({"choices": [{"text": "t"}]}, "t"),
        ({"output_text": "r"}, "r"),
        ([], None),
    ])
    def test_answer_text(self, answer: Any, text: str | None) -> None:
        """Chat, completions and Responses answers have a text; anything else has none."""
        assert answer_text(answer) == text
        assert usage_of(answer) == (answer.get("usage") if isinstance(answer, dict) else None)


THINK = "<think>let me add two and two</think>\n\nThe answer is 4."


class TestSplitReasoning:
    @pytest.mark.parametrize(("content", "answer", "reasoning", "finished"), [
        (THINK, "The answer is 4.", "let me add two and two", True),
        ("no start token</think> 4", "4", "no start token", True),
        ("  <think>x</think>y", "y", "x", True),
        ("plain answer", "plain answer", None, False),
        ("", "", None, False),
    ])
    def test_whole_content(self, content: str, answer: str, reasoning: str | None, finished: bool) -> None:
        """Reasoning up to the end token is taken out; the start token is optional."""
        s = split_reasoning(content, "<think>", "</think>")
        assert (s.answer, s.reasoning, s.finished) == (answer, reasoning, finished)

    @pytest.mark.parametrize(("include", "answer"), [(True, "<think>still thinking"), (False, "")])
    def test_unfinished(self, include: bool, answer: str) -> None:
        """An unfinished block is kept as it is, or blanked when include_if_not_finished is off."""
        s = split_reasoning("<think>still thinking", "<think>", "</think>", include)
        assert (s.answer, s.started, s.finished) == (answer, True, False)

    def test_never_blanks_an_answer_without_reasoning(self) -> None:
        """Without any token the answer is untouched even when unfinished blocks are dropped."""
        assert split_reasoning("just 4", "<think>", "</think>", False).answer == "just 4"
