"""completions_guard: chat-template controls sent to /v1/completions (NeMo 0.4's tests/test_completions_guard.py
cases, replayed against the real proxy and the config loader)."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.config import parse_config
from evalproxy.adapter.config.completions import ALLOW_ENV_VAR, is_text_completions_path, scan
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.simulator import SimulatedModel

GUARDED = {"interceptors": ["completions_guard", "endpoint"]}


@pytest.mark.parametrize(("path", "expected"), [
    ("/v1/completions", True), ("/completions", True), ("/v1/completions/", True), ("/v1/completions?x=1", True),
    ("/v1/chat/completions", False), ("/v1/embeddings", False), ("/v1/chat/completions/", False)])
def test_text_completions_path(path: str, expected: bool) -> None:
    """Only text completions paths are guarded; the chat path, which also ends in /completions, is not."""
    assert is_text_completions_path(path) is expected


@pytest.mark.parametrize(("body", "toggles"), [
    ({"chat_template_kwargs": {"enable_thinking": False}}, ["chat_template_kwargs"]),
    ({"chat_template_kwargs": {"thinking": True}}, ["chat_template_kwargs"]),
    ({"extra_body": {"chat_template_kwargs": {"opts": {"deep": [True]}}}}, ["extra_body.chat_template_kwargs"]),
    ({"chat_template_kwargs": {"budget": 1}}, []),  # 1 is an int, not a toggle
    ({"chat_template": "{{ messages }}"}, []),
])
def test_scan(body: dict[str, Any], toggles: list[str]) -> None:
    """A boolean anywhere inside chat_template_kwargs is a toggle; integers and template strings are not."""
    found = scan(body)
    assert found and found.toggles == toggles


async def test_toggle_is_refused(make_proxy: Any, sim: SimulatedModel) -> None:
    """A boolean toggle sent to /v1/completions is a 400 naming the field; nothing reaches the model."""
    proxy = await make_proxy(GUARDED)
    r = await proxy.post("/v1/completions", json={"prompt": "hi", "chat_template_kwargs": {"enable_thinking": False}})
    err = (await r.json())["error"]
    assert r.status == 400 and err["code"] == "chat_template_on_completions"
    assert "chat_template_kwargs" in err["message"] and ALLOW_ENV_VAR in err["message"]
    assert sim.requests_to("/completions") == []


async def test_inert_fields_are_removed(make_proxy: Any, sim: SimulatedModel, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-boolean fields, and with the allow variable set booleans too, are removed with one warning; chat requests
    keep theirs."""
    monkeypatch.setenv(ALLOW_ENV_VAR, "yes")
    proxy = await make_proxy(GUARDED)
    for _ in range(2):
        r = await proxy.post("/v1/completions", json={"prompt": "hi", "chat_template": "t",
                                                      "chat_template_kwargs": {"enable_thinking": True}})
        assert r.status == 200
    r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                       "chat_template_kwargs": {"enable_thinking": False}})
    assert r.status == 200
    sent = [q.body for q in sim.log]
    assert sent[0] == {"prompt": "hi"} and sent[1] == {"prompt": "hi"}
    assert sent[2] is not None and sent[2]["chat_template_kwargs"] == {"enable_thinking": False}
    assert caplog.text.count("they were removed") == 1


class TestConfig:
    def test_toggle_in_a_completions_config_is_an_error(self) -> None:
        """A boolean toggle a completions config adds (legacy params_to_add) is an error naming the field."""
        with pytest.raises(ConfigError) as e:
            parse_config({"endpoint_type": "completions",
                          "params_to_add": {"chat_template_kwargs": {"enable_thinking": False}}}, source="c.yaml")
        assert "chat_template_kwargs" in str(e.value) and "c.yaml" in str(e.value)

    def test_inert_field_is_stripped_with_a_warning(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A non-boolean field (or a toggle, allowed by the variable) is removed from the config, said in warnings."""
        monkeypatch.setenv(ALLOW_ENV_VAR, "1")
        loaded = parse_config({"endpoint_type": "completions", "interceptors": [
            {"name": "payload_modifier", "config": {"params_to_add": {
                "chat_template_kwargs": {"enable_thinking": False}, "temperature": 0}}}, "endpoint"]})
        assert loaded.adapter.interceptors[0].config == {"params_to_add": {"temperature": 0}}
        assert any("chat_template_kwargs" in w for w in loaded.warnings)

    def test_chat_config_is_untouched(self) -> None:
        """A chat config keeps its chat_template_kwargs."""
        loaded = parse_config({"params_to_add": {"chat_template_kwargs": {"enable_thinking": False}}})
        assert loaded.adapter.interceptors[0].config["params_to_add"] == {
            "chat_template_kwargs": {"enable_thinking": False}}


@pytest.mark.parametrize(("value", "expected"), [
    ("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False), ("", False), ("maybe", False)])
def test_allow_variable(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    """The allow variable's truthy spellings, as 0.4 reads them."""
    from evalproxy.adapter.config.completions import allowed_by_env

    monkeypatch.setenv(ALLOW_ENV_VAR, value)
    assert allowed_by_env() is expected

    def test_04_completions_service(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A 0.4 completions service whose extra_body sets a toggle is refused naming the key as written; allowed, it
        is removed from the chain's payload_modifier."""
        data = {"services": {"m": {"url": "http://x/v1/completions", "protocol": "completions", "proxy": {
            "extra_body": {"chat_template_kwargs": {"enable_thinking": False}, "top_k": 5}}}}}
        with pytest.raises(ConfigError) as e:
            parse_config(data)
        assert e.value.field == "services.m.proxy.extra_body.chat_template_kwargs"
        monkeypatch.setenv(ALLOW_ENV_VAR, "1")
        loaded = parse_config(data)
        modifier = next(i for i in loaded.adapter.interceptors if i.name == "payload_modifier")
        assert modifier.config == {"params_to_add": {"top_k": 5}}
        assert any("removed" in w for w in loaded.warnings)
