"""Why a request missed the cache."""

from __future__ import annotations

from evalproxy.records.explain import explain_miss, field_diffs

BASE = {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "temperature": 0, "max_tokens": 16}


class TestExplain:
    def test_nearest_request_and_its_differences(self) -> None:
        """The nearest stored request comes first, with a changed system prompt named as such."""
        request = {**BASE, "messages": [{"role": "system", "content": "Think step by step."}, BASE["messages"][1]]}
        stored = [{**BASE, "messages": [{"role": "user", "content": "other"}], "max_tokens": 99}, BASE]
        near = explain_miss(request, stored)
        assert near[0].index == 1 and near[0].distance == 1
        assert near[0].summary() == "system prompt changed (messages[0].content)"

    def test_max_tokens_bump_and_new_seed(self) -> None:
        """A larger max_tokens reads as bumped and an added seed as a new seed."""
        diffs = [d.description for d in field_diffs({**BASE, "max_tokens": 32, "seed": 7}, BASE)]
        assert diffs == ["max_tokens bumped: 16 -> 32", "new seed 7"]

    def test_numbers_by_value(self) -> None:
        """Integer 0 and float 0.0 are the same temperature, as in the cache key."""
        assert field_diffs({**BASE, "temperature": 0.0}, BASE) == []

    def test_nothing_stored(self) -> None:
        """With no stored requests there is no neighbour."""
        assert explain_miss(BASE, []) == []

    def test_an_added_system_message_is_one_difference(self) -> None:
        """A conversation with a system message the other lacks differs in that one message, not in every message
        after it."""
        request = {**BASE, "messages": [BASE["messages"][1]]}
        diffs = [d.description for d in field_diffs(request, BASE)]
        assert diffs == ["system message absent in the request (messages[0]; stored: 'Be brief.')"]
        assert [d.description for d in field_diffs(BASE, request)] == ["system message added (messages[0]: "
                                                                       "'Be brief.')"]

    def test_text_diff_of_a_changed_prompt(self) -> None:
        """A changed text gives a unified diff, stored side first; non-text values give none."""
        from evalproxy.records.explain import text_diff

        assert text_diff("a\nB\nc", "a\nb\nc", "x") == ["--- stored x", "+++ request x", "@@ -1,3 +1,3 @@", " a",
                                                         "-b", "+B", " c"]
        assert text_diff(1, 2, "x") == []

    def test_a_bypassed_cache_misses_whatever_is_stored(self) -> None:
        """A run whose caching was bypassed (NeMo 0.4's bypass: true) misses even with an answer stored."""
        from evalproxy.records.explain import KeyedRequest, explain_text

        code, lines = explain_text(KeyedRequest("/v1/chat/completions", dict(BASE), "k" * 64, bypass=True), "c",
                                   True, [BASE], [])
        assert code == 0 and lines[0] == "MISS: this run's caching is bypassed (bypass: true): nothing is looked up " \
                                         "or stored"
