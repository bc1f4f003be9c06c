"""The proxy answers through the simulated model end to end."""

from typing import Any


async def test_chat_roundtrip(make_proxy: Any) -> None:
    """A chat request goes through the proxy to the simulated model and back."""
    client = await make_proxy({"interceptors": ["endpoint"], "generate_html_report": False})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    body = await resp.json()
    assert body["choices"][0]["message"]["content"]
