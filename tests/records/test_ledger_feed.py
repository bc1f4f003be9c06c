"""answer_outcome: what the run's ledger keeps of an answer (token counts, finish reason)."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.records.ledger_feed import Outcome, answer_outcome


async def _no_events() -> Any:
    return
    yield  # an async generator that yields nothing: a stream whose events were already written


class TestAnswerOutcome:
    @pytest.mark.parametrize(("answer", "expected"), [
        ({"choices": [{"finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 3}},
         Outcome(12, 3, "stop")),
        ({"output": [], "usage": {"input_tokens": 5, "output_tokens": 7}}, Outcome(5, 7, None)),
        ({"choices": [{"finish_reason": "length"}]}, Outcome(None, None, "length")),
        ({"choices": ["not an object"], "usage": "none"}, Outcome()),
    ])
    def test_whole_answer(self, answer: dict[str, Any], expected: Outcome) -> None:
        """A whole answer gives its usage (chat or Responses names) and its first choice's finish reason."""
        assert answer_outcome(ProxyResponse.from_json(answer)) == expected

    def test_error_answer_gives_nothing(self) -> None:
        """An error answer is not read for usage, whatever its body says."""
        resp = ProxyResponse.from_json({"usage": {"prompt_tokens": 1}}, status=500)
        assert answer_outcome(resp) == Outcome()

    def test_no_answer_gives_nothing(self) -> None:
        """A request that got no answer leaves the counts and finish reason empty."""
        assert answer_outcome(None) == Outcome()

    def test_stream_gives_its_usage_only(self) -> None:
        """A stream gives the usage the server saw as it wrote it, and no finish reason."""
        resp = ProxyResponse(stream=_no_events())
        resp.stream_usage = {"prompt_tokens": 4, "completion_tokens": 9}
        assert answer_outcome(resp) == Outcome(4, 9, None)
