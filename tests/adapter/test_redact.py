"""redact: the one URL redactor, used by logs, run records and reports."""

from __future__ import annotations

import pytest

from evalproxy.adapter.core.redact import redact_url


class TestRedactUrl:
    @pytest.mark.parametrize(("url", "expected"), [
        ("https://api.example.com/v1", "https://api.example.com/v1"),
        ("https://user:pw@api.example.com/v1", "https://***@api.example.com/v1"),
        ("https://tok@api.example.com:8443/v1", "https://***@api.example.com:8443/v1"),
        ("http://u:p@[::1]:8000/v1", "http://***@[::1]:8000/v1"),
        ("https://x.example.com/v1?api-version=2&api-key=s3cr3t", "https://x.example.com/v1?api-version=2&api-key=***"),
        ("redis://:pw@cache:6379/0", "redis://***@cache:6379/0"),
        (None, None),
    ])
    def test_credentials_are_removed(self, url: str | None, expected: str | None) -> None:
        """User info and key-like query values never show; the host (an IPv6 one in brackets) and the rest stay."""
        assert redact_url(url) == expected
