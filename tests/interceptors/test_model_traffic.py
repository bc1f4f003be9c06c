"""model_traffic through the real proxy: one line per model call in model_traffic.jsonl, as NeMo 0.4 writes it
(its tests/test_engine/test_model_traffic_capture.py cases, replayed against real servers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.simulator import Fault, SimulatedModel

SECRET = "sk-traffic-secret-789"
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
REASONED = orjson.dumps({
    "id": "r1", "object": "chat.completion", "model": "sim-model",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "The answer is 4.", "reasoning_content": "two plus two is four"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 3},
              "prompt_tokens_details": {"cached_tokens": 2}}})


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def chain(**capture: Any) -> dict[str, Any]:
    return {"interceptors": [{"name": "caching", "config": {"reuse_cached_responses": True}},
                             {"name": "model_traffic", "config": capture}, "endpoint"]}


@pytest.mark.timeout(30)
async def test_default_capture(make_proxy: Any, sim: SimulatedModel, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Default switches: content, reasoning and full tool calls captured, the request body not; usage with reasoning
    and cached tokens; a cache hit writes no line; a stream gets one line; an upstream error gets its summary."""
    monkeypatch.setenv("TRAFFIC_KEY", SECRET)
    sim.tool_calls = 1
    proxy = await make_proxy(chain(), api_key_name="TRAFFIC_KEY", max_retries=0, retry_on_status=[])
    sim.script(Fault(body=REASONED))
    ask = {"model": "m", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}
    for _ in range(2):  # the second is a cache hit: never reaches model_traffic
        assert (await proxy.post("/v1/chat/completions", json=ask, headers={"X-Session-Id": "s1"})).status == 200
    r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "look"}],
                                                       "tools": TOOLS, "stream": True, "temperature": 0})
    await r.read()
    sim.script(Fault(status=500))
    assert (await proxy.post("/v1/chat/completions",
                             json={"messages": [{"role": "user", "content": "x"}], "temperature": 0})).status == 500
    await proxy.close()
    got = lines(tmp_path / "out" / "model_traffic.jsonl")
    assert [g["status_code"] for g in got] == [200, 200, 500]
    first, streamed, failed = got
    assert first["session_id"] == "s1" and first["path"] == "/v1/chat/completions" and first["model"] == "sim-model"
    assert first["message_content"] == "The answer is 4."
    assert first["reasoning_content"] == "two plus two is four"
    assert first["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
                              "reasoning_tokens": 3, "cached_tokens": 2}
    assert "request_body" not in first and len(first["request_hash"]) == 16
    assert streamed["tool_calls"] == {"count": 1, "names": {"search": 1}}
    assert streamed["tool_calls_full"][0]["name"] == "search" and streamed["tool_calls_full"][0]["arguments"]
    assert streamed["finish_reason"] == "tool_calls"
    assert failed["error_message"] == "simulated error 500" and failed["error_type"] == "simulated_error"
    assert "message_content" not in failed and failed["usage"] == {}


@pytest.mark.timeout(30)
async def test_switches_and_redaction(make_proxy: Any, sim: SimulatedModel, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """capture_* false leave their fields out; capture_request_body keeps the body with secrets redacted, and an
    answer echoing the run's key is captured redacted; max_content_chars cuts each text and says how much was
    dropped."""
    monkeypatch.setenv("TRAFFIC_KEY", SECRET)
    proxy = await make_proxy(chain(capture_reasoning=False, capture_tool_calls=False,
                                   capture_request_body=True, max_content_chars=40), api_key_name="TRAFFIC_KEY")
    body = {"messages": [{"role": "user", "content": f"my key is {SECRET} " + "y" * 100}], "api_key": "sk-body-1"}
    sim.answers = lambda prompt: f"you said {SECRET}"  # an answer echoing the key is captured redacted
    assert (await proxy.post("/v1/chat/completions", json=body)).status == 200
    await proxy.close()
    (line,) = lines(tmp_path / "out" / "model_traffic.jsonl")
    assert not {"reasoning_content", "tool_calls_full"} & set(line)
    assert line["message_content"] == "you said ***"
    assert line["request_body"].endswith("chars dropped]") and len(line["request_body"]) < 100
    raw = (tmp_path / "out" / "model_traffic.jsonl").read_bytes()
    assert SECRET.encode() not in raw and b"sk-body-1" not in raw


@pytest.mark.timeout(30)
async def test_broken_stream_is_a_failed_line(make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
    """A stream that broke off is recorded with no status and the reason (0.4's finish_error), not as a success."""
    proxy = await make_proxy(chain(), max_retries=0)
    sim.script(Fault(drop_after_events=2))
    r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                       "stream": True})
    await r.read()
    await proxy.close()
    (line,) = lines(tmp_path / "out" / "model_traffic.jsonl")
    assert line["status_code"] is None and line["error_type"] == "stream_interrupted"
    assert "message_content" not in line


@pytest.mark.timeout(30)
async def test_unreachable_upstream_is_recorded(make_proxy: Any, tmp_path: Path) -> None:
    """A call the upstream never answered (connection refused) still gets its line, with the proxy's own error
    (0.4's test_client_error_final_failure_records_model_traffic)."""
    proxy = await make_proxy(chain(), upstream_url="http://127.0.0.1:9/v1", max_retries=0)
    r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status == 502
    await proxy.close()
    (line,) = lines(tmp_path / "out" / "model_traffic.jsonl")
    assert line["status_code"] == 502 and line["error_message"] and line["error_type"]


@pytest.mark.parametrize("on", [True, False])
def test_summary_switches(on: bool) -> None:
    """Each capture switch adds its field or leaves it out (0.4's test_summary_from_json_response_capture_fields);
    the statistics fields are there either way."""
    from evalproxy.interceptors.model_traffic import ModelTrafficParams, summary

    p = ModelTrafficParams(capture_messages=on, capture_reasoning=on, capture_tool_calls=on)
    got = summary(orjson.loads(REASONED), p)
    assert ({"message_content", "reasoning_content", "tool_calls_full"} <= set(got)) is on
    assert not ({"message_content", "reasoning_content", "tool_calls_full"} & set(got)) or on
    assert got["finish_reason"] == "stop" and got["tool_calls"] == {"count": 0, "names": {}}
