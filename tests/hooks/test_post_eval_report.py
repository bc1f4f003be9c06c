"""post_eval_report: reports from real runs, escaping, re-rendering, and a real browser."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.adapter.server import PROXY
from evalproxy.simulator import Fault, SimulatedModel

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCRIPT = '<script>document.title="pwned";document.body.innerHTML="gone"</script><b>bold?</b>'
CHAIN = {"interceptors": ["reasoning", {"name": "caching", "config": {"save_requests": True}}, "endpoint",
                          "response_stats"],
         "post_eval_hooks": [{"name": "post_eval_report", "config": {"html_report_size": 3}}]}


async def real_run(make_proxy: Any, sim: SimulatedModel, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run with a chat answer, a streamed one, one whose content is HTML/script, and a failure."""
    monkeypatch.setenv("REPORT_TEST_KEY", "sk-report-secret-999")
    sim.reasoning = True
    proxy = await make_proxy(CHAIN, max_retries=0, api_key_name="REPORT_TEST_KEY", model_id="sim-model")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first <i>question</i>"}]
    r = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": msgs, "temperature": 0.0})
    assert r.status == 200
    r = await proxy.post("/v1/chat/completions", json={"model": "m", "stream": True, "max_tokens": 64,
                                                       "messages": [{"role": "user", "content": "second"}]})
    await r.read()
    sim.script(Fault(content=SCRIPT))
    await proxy.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "third"}]})
    sim.script(Fault(status=503))
    r = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "4th"}]})
    assert r.status == 503
    await proxy.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "fifth"}]})
    await proxy.close()
    return Path(str(proxy.server.app[PROXY].run.output_dir))


class TestReport:
    async def test_report_from_a_real_run(self, make_proxy: Any, sim: SimulatedModel,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """report.json has the summary, statistics, the first N pairs in arrival order and the failure."""
        out = await real_run(make_proxy, sim, monkeypatch)
        report = orjson.loads((out / "report.json").read_bytes())
        summary = report["summary"]
        assert summary["model"] == "sim-model"
        assert summary["interceptors"] == ["reasoning", "caching", "endpoint", "response_stats"]
        assert summary["generation_params"]["temperature"] == [0.0]
        assert summary["generation_params"]["max_tokens"] == [64]
        pairs = report["pairs"]
        assert [p["messages"][-1]["content"] for p in pairs] == ["first <i>question</i>", "second", "third"]
        first = pairs[0]
        assert first["answers"][0]["reasoning"] and "<think>" not in first["answers"][0]["content"]
        assert pairs[1]["stream"] is True and pairs[1]["answers"][0]["content"]
        assert "$API_KEY" in first["curl"] and "sk-report-secret-999" not in first["curl"]
        assert [f["status"] for f in report["failures"]] == [503]
        assert report["statistics"]["response_stats"]["count"] == 5
        assert report["statistics"]["reasoning"]["reasoning_finished_count"] == 3

    async def test_html_escapes_model_output(self, make_proxy: Any, sim: SimulatedModel,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        """Model output with HTML and <script> is in report.html as text, never as markup; no secret appears."""
        out = await real_run(make_proxy, sim, monkeypatch)
        page = (out / "report.html").read_text()
        assert SCRIPT not in page and "<b>bold?</b>" not in page
        assert html.escape(SCRIPT, quote=False)[:30] in page or "&lt;script&gt;" in page
        assert "first &lt;i&gt;question&lt;/i&gt;" in page
        assert "sk-report-secret-999" not in page
        assert not re.search(r"<script\b", page)  # the report itself runs no script at all
        assert 'src="http' not in page and 'href="http' not in page  # no external assets

    async def test_no_pairs_still_reports_statistics(self, make_proxy: Any, tmp_path: Path) -> None:
        """Without a cache the report still has the statistics and says that no pairs were saved."""
        proxy = await make_proxy({"interceptors": ["endpoint", "response_stats"]})
        await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        await proxy.close()
        report = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
        assert report["pairs"] == [] and "no cache" in report["pairs_note"]
        assert report["statistics"]["response_stats"]["count"] == 1
        assert "no cache" in (tmp_path / "out" / "report.html").read_text()

    async def test_cli_rerenders_from_the_run_directory(self, make_proxy: Any, sim: SimulatedModel,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """evalproxy report DIR writes both files again from the directory alone."""
        out = await real_run(make_proxy, sim, monkeypatch)
        before = orjson.loads((out / "report.json").read_bytes())
        (out / "report.json").unlink()
        (out / "report.html").unlink()
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "evalproxy", "report", str(out)],
                                       capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        after = orjson.loads((out / "report.json").read_bytes())
        assert [p["cache_key"] for p in after["pairs"]] == [p["cache_key"] for p in before["pairs"]]
        assert (out / "report.html").is_file()


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={user_dir}", *args],
        capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(user_dir)})


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (bash .ci/setup installs it)")
class TestInBrowser:
    async def test_dom_and_screenshot(self, make_proxy: Any, sim: SimulatedModel, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
        """Headless Chromium renders the report: the pairs and cards are in the DOM, the model's script never ran."""
        out = await real_run(make_proxy, sim, monkeypatch)
        url = (out / "report.html").as_uri()
        dom = await asyncio.to_thread(chromium, "--dump-dom", url, user_dir=tmp_path / "c1")
        assert dom.returncode == 0, dom.stderr[-2000:]
        text = dom.stdout
        assert "<title>evalproxy report: sim-model</title>" in text  # the injected script would retitle it
        assert "pwned" not in text.split("</title>")[0]
        assert len(re.findall(r'<div class="pair" id="pair-\d+">', text)) == 3
        assert 'id="summary-cards"' in text and 'id="failures"' in text and "<svg" in text
        assert "&lt;script&gt;" in text  # shown as text
        shot = tmp_path / "report.png"
        done = await asyncio.to_thread(chromium, "--window-size=1280,2000", f"--screenshot={shot}", url,
                                       user_dir=tmp_path / "c2")
        assert done.returncode == 0 and shot.stat().st_size > 10_000
