"""redact: the one URL redactor, used by logs, run records and reports."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.core.redact import redact_url, secret_env


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


class TestRedactObj:
    def test_rename_maps_hold_names_not_secrets(self) -> None:
        """A headers_to_rename map keeps its header names (X-Old-Auth -> X-New-Auth is no secret), while an auth
        header's value elsewhere is still redacted (issue 21)."""
        from evalproxy.adapter.core.redact import REDACTED, redact_obj

        cfg = {"headers_to_rename": {"X-Old-Auth": "X-New-Auth"}, "params_to_rename": {"api_key": "key_name"},
               "headers_to_add": {"X-Auth-Token": "s3cret"}}
        out = redact_obj(cfg)
        assert out["headers_to_rename"] == {"X-Old-Auth": "X-New-Auth"}
        assert out["params_to_rename"] == {"api_key": "key_name"}
        assert out["headers_to_add"] == {"X-Auth-Token": REDACTED}


class TestRedactText:
    def test_a_one_character_key_does_not_garble_text(self) -> None:
        """A one-character key value is not cut out of words (issue 20: ``ma***_saved_responses``), yet a field or
        a text that is the key itself is still redacted."""
        from evalproxy.adapter.core.redact import REDACTED, redact_obj, redact_text

        line = "caching: max_saved_responses=10, key x"
        assert redact_text(line, ["x"]) == line
        assert redact_text("x", ["x"]) == REDACTED
        assert redact_obj({"note": "x", "api_key": "x", "text": "max"}, ["x"]) == {
            "note": REDACTED, "api_key": REDACTED, "text": "max"}
        assert redact_text("key sk-long-secret-1 here", ["sk-long-secret-1"]) == f"key {REDACTED} here"


class TestSecretEnv:
    @pytest.mark.parametrize(("name", "value", "secret"), [
        ("HF_TOKEN", "hf_abc", True),
        ("WANDB_API_KEY", "k", True),
        ("AWS_SECRET_ACCESS_KEY", "k", True),
        ("MLFLOW_TRACKING_PASSWORD", "pw", True),
        ("DATABASE_URL", "postgres://app:pw@db/app", True),
        ("PROVIDER_ENDPOINT", "https://x.example.com/v1?key=abc", True),
        ("PATH", "/usr/bin:/bin", False),
        ("HF_HOME", "/data/hf", False),
        ("MAX_TOKENS", "512", False),
        ("TOKENIZERS_PARALLELISM", "false", False),
        ("EVALPROXY_JOBS_URL", "http://127.0.0.1:8080", False),
    ])
    def test_credentials_are_told_by_name_or_by_a_url_carrying_one(self, name: str, value: str,
                                                                   secret: bool) -> None:
        """A variable is a credential when a word of its name says so or its value is a URL holding one; names
        that only mention tokens (MAX_TOKENS, TOKENIZERS_PARALLELISM) and plain URLs are not."""
        assert secret_env(name, value) is secret


async def test_a_failed_requests_log_line_hides_the_runs_key(make_proxy: Any, caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """log_failed_requests: a request that fails (the upstream unreachable) is logged without the run's key, though
    it sits in a body field not named as a secret."""
    monkeypatch.setenv("FAILED_TEST_KEY", "sk-failed-key-5521")
    caplog.set_level("WARNING")
    proxy = await make_proxy({"log_failed_requests": True, "interceptors": ["endpoint"]},
                             upstream_url="http://127.0.0.1:9/v1", api_key_name="FAILED_TEST_KEY", max_retries=0)
    r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                        "metadata": {"note": "sk-failed-key-5521"}})
    assert r.status == 502
    failed = [m for m in caplog.messages if m.startswith("request failed with 502")]
    assert len(failed) == 1 and '"note":"***"' in failed[0]
    assert "sk-failed-key-5521" not in caplog.text
