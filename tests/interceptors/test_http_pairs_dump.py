"""http_pairs_dump through the real proxy: secrets in a request body are never written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.simulator import SimulatedModel

SECRET = "sk-SECRET-in-the-body-123"


@pytest.mark.timeout(30)
async def test_body_secrets_are_redacted_in_every_file(make_proxy: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A request body's api_key appears in no file the run writes, and the run's own key, wherever it sits in the
    body, not in the dump; the dump keeps the field, redacted."""
    monkeypatch.setenv("DUMP_TEST_KEY", "sk-run-key-456")
    out = tmp_path / "out"
    dump = out / "pairs.json"
    proxy = await make_proxy({"interceptors": [
        {"name": "http_pairs_dump", "config": {"dump_path": str(dump)}},
        {"name": "caching", "config": {"save_requests": True}}, "endpoint"],
        "post_eval_hooks": [{"name": "post_eval_report", "config": {"report_types": ["html", "json"]}}]},
        api_key_name="DUMP_TEST_KEY")
    body = {"model": "m", "api_key": SECRET, "metadata": {"note": "key sk-run-key-456"},
            "messages": [{"role": "user", "content": "hi"}]}
    r = await proxy.post("/v1/chat/completions", json=body)
    assert r.status == 200
    await proxy.close()
    dumped = orjson.loads(dump.read_bytes())
    assert dumped["pairs"][0]["request"]["body"]["api_key"] == "***"
    assert b"sk-run-key-456" not in dump.read_bytes()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert dump in files and len(files) > 3
    for p in files:
        data = p.read_bytes()
        assert SECRET.encode() not in data, p


class TestHttpPairsDump:
    async def test_first_n_and_failures(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
        """The first first_n pairs and every non-200 one are kept; metrics count every status; keys are redacted."""
        from evalproxy.simulator import Fault

        dump = tmp_path / "pairs.json"
        proxy = await make_proxy({"interceptors": [
            {"name": "http_pairs_dump", "config": {"dump_path": str(dump), "first_n": 1}}, "endpoint"]},
            max_retries=0, retry_on_status=[])
        for i in range(3):
            if i == 2:
                sim.script(Fault(status=500))
            await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}]},
                             headers={"Authorization": "Bearer sk-secret-dump"})
        await proxy.close()
        data = orjson.loads(dump.read_bytes())
        assert data["metrics"] == {"200": 2, "500": 1}
        assert [p["response"]["status"] for p in data["pairs"]] == [200, 500]
        assert data["pairs"][0]["request"]["body"]["messages"][0]["content"] == "q0"
        assert "sk-secret-dump" not in dump.read_text()
