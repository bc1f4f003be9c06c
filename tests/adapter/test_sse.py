"""sse: events keep their bytes and parse their JSON once."""

from __future__ import annotations

from evalproxy.adapter.flow.sse import DONE, Event, event_data, event_json


class TestEvent:
    def test_json_and_bytes_round_trip(self) -> None:
        """An event made from an object serialises to one ``data:`` line that parses back to the object."""
        e = Event.of({"a": 1})
        assert e.raw == b'data: {"a":1}\n\n' and event_json(e.raw) == {"a": 1} and Event(e.raw).json == {"a": 1}

    def test_done_and_multi_line_data(self) -> None:
        """``[DONE]`` has no JSON, and several ``data:`` lines are joined by newlines."""
        assert DONE.is_done and DONE.json is None
        assert event_data(b"data: a\r\ndata: b\r\n\r\n") == b"a\nb"
