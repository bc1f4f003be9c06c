"""post_eval_report: reports from real runs, escaping, secrets, re-rendering, charts, and a real browser."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.server.app import PROXY
from evalproxy.hooks.post_eval_report import render_reports
from evalproxy.hooks.post_eval_report.charts import report_charts, svg_histogram
from evalproxy.simulator import Fault, SimulatedModel
from tests import browser
from tests.browser import CHROMIUM, MISSING, chromium
from tests.storage.test_redis_server import RedisServer, needs_redis

# Model output that would retitle the page and add a marker element, were it ever executed.
SCRIPT = ('<script>document.title="pwned";var d=document.createElement("div");d.id="pwned-marker";'
          'document.body.appendChild(d)</script><b>bold?</b><img src=x onerror="document.title=1">')
SECRET = "sk-report-secret-999"


def chain(tmp_path: Path, **adapter: Any) -> dict[str, Any]:
    """The real chain the tests run: caching saves pairs into a configured cache dir; hooks come from the defaults."""
    return {"interceptors": ["reasoning",
                             {"name": "caching", "config": {"save_requests": True, "cache_dir": str(tmp_path / "c")}},
                             "endpoint", "response_stats"],
            "post_eval_hooks": [{"name": "post_eval_report",
                                 "config": {"report_types": ["html", "json"], "html_report_size": 3}}],
            **adapter}


async def real_run(make_proxy: Any, sim: SimulatedModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A run with a chat answer, a streamed one, one whose content is HTML/script, a failure and one more answer."""
    monkeypatch.setenv("REPORT_TEST_KEY", SECRET)
    sim.reasoning = True
    proxy = await make_proxy(chain(tmp_path), max_retries=0, api_key_name="REPORT_TEST_KEY", model_id="sim-model")
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
    await proxy.close()  # runs the post-eval hooks
    return Path(str(proxy.server.app[PROXY].run.output_dir))


def load(out: Path) -> dict[str, Any]:
    """evalproxy's own report data (report.json is NeMo Evaluator's list of pairs)."""
    report: dict[str, Any] = orjson.loads((out / "evalproxy_report.json").read_bytes())
    return report


class TestReport:
    async def test_report_from_a_real_run(self, make_proxy: Any, sim: SimulatedModel, upstream: Any,
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """report.json has the summary, statistics, the first N pairs in arrival order and the failure."""
        out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
        report = load(out)
        summary = report["summary"]
        assert summary["model"] == "sim-model"
        assert summary["interceptors"] == ["reasoning", "caching", "endpoint", "response_stats"]
        assert summary["post_eval_hooks"] == ["post_eval_report"]
        assert summary["cache_dir"] == str(tmp_path / "c")
        assert summary["generation_params"] == {"temperature": [0.0], "max_tokens": [64], "stream": [True]}
        assert summary["saved_pairs_total"] == 4 and summary["failures_total"] == 1
        pairs = report["pairs"]
        assert [p["messages"][-1]["content"] for p in pairs] == ["first <i>question</i>", "second", "third"]
        assert [p["request_id"] for p in pairs] == [0, 1, 2]
        first = pairs[0]
        assert first["messages"][0] == {"role": "system", "content": "Be brief."}
        assert first["answers"][0]["reasoning"] and "<think>" not in first["answers"][0]["content"]
        assert first["answers"][0]["finish_reason"] == "stop" and len(first["cache_key"]) == 64
        assert pairs[1]["stream"] is True and pairs[1]["answers"][0]["content"]
        assert pairs[2]["answers"][0]["content"] == SCRIPT
        assert first["curl"].startswith(f"curl -sS {upstream.make_url('/v1/chat/completions')} ")
        assert '"Authorization: Bearer $API_KEY"' in first["curl"]
        [failure] = report["failures"]
        assert failure["status"] == 503 and failure["last_message"] == "4th" and "503" in failure["error"]
        stats = report["statistics"]
        assert stats["response_stats"]["count"] == 5 and stats["response_stats"]["status_codes"]["503"] == 1
        assert stats["reasoning"]["reasoning_finished_count"] == 3
        assert stats["caching"]["misses"] == 5

    @pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
    @pytest.mark.parametrize(("index", "answer"), [(0, '"choices"'), (1, "data: ")], ids=["json", "stream"])
    async def test_curl_command_reproduces_the_request(self, make_proxy: Any, sim: SimulatedModel,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       index: int, answer: str) -> None:
        """The pair's curl command, run by a shell with API_KEY set, sends the same body and key upstream."""
        out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
        pair = load(out)["pairs"][index]
        sim.log.clear()
        done = await asyncio.to_thread(subprocess.run, ["bash", "-c", pair["curl"]], capture_output=True, text=True,
                                       timeout=30, env={**os.environ, "API_KEY": "sk-replay"})
        assert done.returncode == 0, done.stderr
        [received] = sim.log
        assert received.body == pair["request"] and received.headers["Authorization"] == "Bearer sk-replay"
        assert answer in done.stdout

    async def test_html_shows_the_run(self, make_proxy: Any, sim: SimulatedModel,
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """report.html carries the summary, both charts, the pairs with full cache keys, and the failure."""
        out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
        page = (out / "report.html").read_text()
        report = load(out)
        assert "<title>evalproxy report: sim-model</title>" in page
        assert page.count('<article class="pair"') == 3
        assert all(p["cache_key"] in page for p in report["pairs"])
        assert page.count('<svg class="chart"') == 2
        assert "<details class=\"reasoning\">" in page and "raw request JSON" in page
        assert 'id="failures-table"' in page and "simulated error 503" in page
        assert 'id="pairs-note"' not in page

    async def test_html_escapes_model_output(self, make_proxy: Any, sim: SimulatedModel,
                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Model output with HTML and <script> is in report.html as text, never as markup; the page has no script."""
        out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
        page = (out / "report.html").read_text()
        assert "&lt;script&gt;document.title=" in page and "&lt;b&gt;bold?&lt;/b&gt;" in page
        assert "first &lt;i&gt;question&lt;/i&gt;" in page
        assert not re.search(r"<script\b", page) and "<b>bold?" not in page and "<img" not in page
        assert 'src="http' not in page and 'href="http' not in page  # no external assets

    async def test_secrets_never_appear(self, make_proxy: Any, sim: SimulatedModel,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """The run's API key, even pasted into a message, and bearer tokens are redacted in both files."""
        monkeypatch.setenv("REPORT_TEST_KEY", SECRET)
        proxy = await make_proxy(chain(tmp_path), api_key_name="REPORT_TEST_KEY")
        leaky = f"my key is {SECRET}; header Authorization: Bearer abc.def-123"
        await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": leaky}],
                                                       "api_key": "sk-in-the-body"})
        await proxy.close()
        out = tmp_path / "out"
        for name in ("report.json", "report.html"):
            text = (out / name).read_text()
            assert SECRET not in text and "abc.def-123" not in text and "sk-in-the-body" not in text
            assert "my key is ***" in text
        assert load(out)["pairs"][0]["request"]["api_key"] == "***"

    async def test_model_fields_named_like_secrets_are_kept(self, make_proxy: Any, sim: SimulatedModel,
                                                           tmp_path: Path) -> None:
        """An answer's own fields (logprobs "token") survive; only secret values are removed from answers."""
        answer = {"id": "x", "object": "chat.completion", "model": "m", "choices": [{
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi Bearer abc.def-9"},
            "logprobs": {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}}]}
        sim.script(Fault(body=orjson.dumps(answer)))
        proxy = await make_proxy(chain(tmp_path))
        await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                       "logprobs": True})
        await proxy.close()
        [pair] = load(tmp_path / "out")["pairs"]
        assert pair["response"]["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"
        assert pair["answers"][0]["content"] == "Hi Bearer ***"

    async def test_tools_and_media_are_readable(self, make_proxy: Any, tmp_path: Path) -> None:
        """Tool calls and tool results are shown with their ids; inline images are clipped except in the curl."""
        image = "data:image/png;base64," + "A" * 5000
        call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
        messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                 {"type": "image_url", "image_url": {"url": image}}]},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "2"}]
        proxy = await make_proxy(chain(tmp_path))
        await proxy.post("/v1/chat/completions", json={"messages": messages})
        await proxy.close()
        [pair] = load(tmp_path / "out")["pairs"]
        assert pair["messages"] == [{"role": "user", "content": "what is this?\n[image_url]"},
                                    {"role": "assistant", "content": "", "tool_calls": [call]},
                                    {"role": "tool", "name": "call_1", "content": "2"}]
        clipped = pair["request"]["messages"][0]["content"][1]["image_url"]["url"]
        assert clipped.startswith("data:image/png;base64,...") and "5022 chars" in clipped
        assert image in pair["curl"]
        page = (tmp_path / "out" / "report.html").read_text()
        assert page.count(image) == 1 and "tool · call_1" in page and "add({&#34;a&#34;: 1})  [call_1]" in page

    @pytest.mark.parametrize(("adapter", "note"), [
        ({"interceptors": ["endpoint", "response_stats"]}, "no cache at"),
        ({"interceptors": ["caching", "endpoint", "response_stats"]}, "no request/response pairs were saved"),
    ], ids=["no-cache", "nothing-saved"])
    async def test_no_pairs_no_report_but_the_details_say_why(self, make_proxy: Any, tmp_path: Path,
                                                              adapter: dict[str, Any], note: str) -> None:
        """As NeMo: without saved pairs neither report.html nor report.json is written; evalproxy_report.json has
        the statistics and says that no pairs were saved."""
        hook = {"name": "post_eval_report", "config": {"report_types": ["html", "json"]}}
        proxy = await make_proxy({**adapter, "post_eval_hooks": [hook]})
        await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        await proxy.close()
        report = load(tmp_path / "out")
        assert report["pairs"] == [] and note in report["pairs_note"]
        assert report["statistics"]["response_stats"]["count"] == 1
        assert not (tmp_path / "out" / "report.html").exists() and not (tmp_path / "out" / "report.json").exists()

    async def test_report_json_is_nemos_list(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
        """report.json is NeMo Evaluator's list: request_data, display_request, response, endpoint, cache_key."""
        hook = {"name": "post_eval_report", "config": {"report_types": ["json"]}}
        proxy = await make_proxy(chain(tmp_path, post_eval_hooks=[hook]), model_id="sim-model")
        for q in ("a", "b"):
            await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": q}]})
        await proxy.close()
        entries = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
        assert [sorted(e) for e in entries] == [["cache_key", "display_request", "endpoint", "request_data",
                                                 "response"]] * 2
        assert [e["request_data"]["messages"][0]["content"] for e in entries] == ["a", "b"]
        assert entries[0]["display_request"] == entries[0]["request_data"]
        assert entries[0]["endpoint"].endswith("/v1/chat/completions")
        assert entries[0]["response"]["choices"][0]["message"]["content"]

    def test_default_report_types_is_html(self) -> None:
        """As NeMo: a post_eval_report entry without report_types writes HTML only."""
        from evalproxy.hooks.post_eval_report import PostEvalReportHook

        assert PostEvalReportHook.Params().report_types == ["html"]

    async def test_without_its_own_size_the_hook_shows_every_saved_pair(self, make_proxy: Any, sim: SimulatedModel,
                                                                         tmp_path: Path) -> None:
        """As NeMo 0.2.8's hook: without its own html_report_size it shows every saved pair (the adapter's
        html_report_size sizes only the hook it adds itself); report_types picks the files written; evalproxy report
        re-renders the same."""
        hooks = [{"name": "post_eval_report", "config": {"report_types": ["json"]}}]
        proxy = await make_proxy(chain(tmp_path, html_report_size=2, post_eval_hooks=hooks))
        for i in range(4):
            await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}]})
        await proxy.close()
        out = tmp_path / "out"
        report = load(out)
        assert [p["messages"][0]["content"] for p in report["pairs"]] == ["q0", "q1", "q2", "q3"]
        assert report["summary"]["saved_pairs_total"] == 4
        assert not (out / "report.html").exists()
        await render_reports(out)
        assert len(load(out)["pairs"]) == 4

    async def test_empty_run_directory(self, tmp_path: Path) -> None:
        """A directory without config, statistics or cache gets no report, and details that say what is missing."""
        written = await render_reports(tmp_path)
        assert sorted(p.name for p in written) == ["evalproxy_report.json"]
        report = load(tmp_path)
        assert report["statistics"] == {} and report["pairs"] == [] and report["pairs_note"]

    @pytest.mark.parametrize(("config", "error"), [
        ("server: [unclosed", ConfigError), ("- a list", ConfigError),
        ("adapter_config: {html_report_size: -1}", ConfigError), (None, FileNotFoundError),
    ], ids=["bad-yaml", "not-a-mapping", "invalid-field", "no-directory"])
    async def test_unusable_run_directory_is_refused(self, tmp_path: Path, config: str | None,
                                                     error: type[Exception]) -> None:
        """A damaged adapter_config.yaml is a ConfigError naming the file; a missing directory is not created."""
        out = tmp_path / "run"
        if config is not None:
            out.mkdir()
            (out / "adapter_config.yaml").write_text(config)
        with pytest.raises(error, match="adapter_config.yaml" if config else "no run directory"):
            await render_reports(out)
        assert not (out / "report.json").exists()

    async def test_cli_rerenders_from_the_run_directory(self, make_proxy: Any, sim: SimulatedModel,
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """evalproxy report DIR writes both files again from the directory alone (config, statistics, cache)."""
        out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
        before = load(out)
        (out / "report.json").unlink()
        (out / "report.html").unlink()
        env = {k: v for k, v in os.environ.items() if k != "REPORT_TEST_KEY"}
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "evalproxy", "report", str(out)],
                                       capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        after = load(out)
        assert after["pairs"] == before["pairs"] and after["failures"] == before["failures"]
        assert after["summary"] == before["summary"]
        assert (out / "report.html").is_file()


class TestCharts:
    def test_histogram_has_one_bar_per_bin_and_escapes_text(self) -> None:
        """Each bin is a bar with a tooltip; the title and unit are escaped."""
        svg = svg_histogram("<b>lat</b>", [0.0, 1.0, 2.0, 3.0], [1, 0, 4], "m&s")
        assert svg.count("<rect") == 3 and "<title>0 to 1 m&amp;s: 1</title>" in svg
        assert "&lt;b&gt;lat&lt;/b&gt;" in svg and "<b>" not in svg and ">n = 5<" in svg

    @pytest.mark.parametrize(("edges", "counts"), [([], []), ([0.0, 1.0], [0]), ([0.0, 1.0], [1, 2])],
                             ids=["empty", "all-zero", "mismatched"])
    def test_no_chart_without_usable_data(self, edges: list[float], counts: list[int]) -> None:
        """No data, only empty bins, or inconsistent bins draw nothing."""
        assert svg_histogram("t", edges, counts, "ms") == ""

    def test_report_charts_tolerate_missing_sections(self) -> None:
        """Statistics without histograms (older files, other writers) give no charts rather than an error."""
        assert report_charts({}) == [] and report_charts({"histograms": {"latency_ms": None}}) == []


async def dump_dom(page: Path, user_dir: Path) -> str:
    return await asyncio.to_thread(browser.dump_dom, page, user_dir)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
class TestInBrowser:
    async def test_dom_and_screenshot(self, make_proxy: Any, sim: SimulatedModel, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
        """Headless Chromium renders the report: cards, tables, charts, pairs and failures are in the DOM."""
        out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
        dom = await dump_dom(out / "report.html", tmp_path / "c1")
        assert len(re.findall(r'<article class="pair" id="pair-\d+">', dom)) == 3
        for element in ('id="summary-cards"', 'id="status-codes"', 'id="latency"', 'id="reasoning"',
                        'id="failures-table"'):
            assert element in dom
        assert dom.count('<svg class="chart"') == 2 and dom.count("<details") >= 9
        shot = tmp_path / "report.png"
        done = await asyncio.to_thread(chromium, "--window-size=1280,2000", f"--screenshot={shot}",
                                       (out / "report.html").as_uri(), user_dir=tmp_path / "c2")
        assert done.returncode == 0 and shot.stat().st_size > 10_000

    async def test_model_script_never_runs(self, make_proxy: Any, sim: SimulatedModel,
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """A <script> in model output stays text: the title is unchanged and the marker element is never created."""
        out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
        dom = await dump_dom(out / "report.html", tmp_path / "c1")
        assert "<title>evalproxy report: sim-model</title>" in dom
        assert not re.search(r"<div[^>]*id=\"pwned-marker\"", dom)
        assert "&lt;script&gt;document.title=" in dom  # shown, as text


@needs_redis
async def test_report_of_a_run_cached_in_redis_shows_its_pairs(
    make_proxy: Any, tmp_path: Path, redis_server: RedisServer
) -> None:
    """A run whose cache is on a Redis server gets a report with its saved pairs, read through the store interface."""
    url = f"{redis_server.url}?prefix=report-test:"
    proxy = await make_proxy({"interceptors": [{"name": "caching", "config": {"cache_url": url, "save_requests": True}},
                                               "endpoint"],
                              "post_eval_hooks": [{"name": "post_eval_report", "config": {"report_types": ["json"]}}]})
    for i in range(3):
        body = {"messages": [{"role": "user", "content": f"question {i}"}], "temperature": 0}
        assert (await proxy.post("/v1/chat/completions", json=body)).status == 200
    await proxy.close()
    report = orjson.loads((tmp_path / "out" / "report.json").read_bytes())
    assert [r["request_data"]["messages"][0]["content"] for r in report] == [f"question {i}" for i in range(3)]
