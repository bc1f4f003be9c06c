"""Upstream URL mapping and Retry-After parsing."""

from __future__ import annotations

import pytest

from evalproxy.adapter.server.upstream import parse_retry_after, upstream_url_for


class TestUpstreamUrl:
    @pytest.mark.parametrize(
        ("upstream", "path", "expected"),
        [
            ("http://h/v1", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/", "/v1/completions", "http://h/v1/completions"),
            ("http://h/v1", "/v1/models", "http://h/v1/models"),
            ("http://h", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/v1/completions", "http://h/v1/completions"),
            ("http://h/v1/chat/completions", "/v1/embeddings", "http://h/v1/embeddings"),
            ("http://h/v1/completions", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/completions", "/v1/completions", "http://h/v1/completions"),
            ("http://h/v1", "/tokenize", "http://h/tokenize"),
            ("http://h/openai/v1", "/v1/chat/completions", "http://h/openai/v1/chat/completions"),
        ],
    )
    def test_mapping(self, upstream: str, path: str, expected: str) -> None:
        """A request path lands on the right upstream URL for base and full endpoint URLs alike."""
        assert upstream_url_for(upstream, path) == expected


class TestRetryAfter:
    @pytest.mark.parametrize(("value", "expected"), [("2", 2.0), ("0.5", 0.5), (None, None), ("soon", None),
                                                     ("-3", 0.0)])
    def test_seconds(self, value: str | None, expected: float | None) -> None:
        """Retry-After in seconds is read as a delay; nonsense is ignored."""
        assert parse_retry_after(value) == expected

    def test_http_date_in_the_past_is_zero(self) -> None:
        """A Retry-After date in the past means retry now."""
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
