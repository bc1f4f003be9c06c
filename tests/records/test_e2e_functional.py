"""End to end with a real harness: inspect-ai runs against the fake model through a recording pass-through.

The pass-through stands in for `evalproxy run` until the records package is wired into the CLI: it feeds every
request to ObservedParams and RequestLedger exactly as the proxy will, and keeps each answer for the compare step.
Three runs are made once per module: `base` (temperature 0), `hot` (temperature 0.6, same model) and `worse`
(temperature 0, a model that gets 3 more sums wrong).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from evalproxy.records import (
    ObservedParams,
    RequestLedger,
    compare_runs,
    export_runs,
    prompt_key,
    read_results,
    record_run,
)
from evalproxy.simulator import SimulatedModel, sums

from .conftest import FIXTURES

pytest.importorskip("inspect_ai", reason="the end-to-end test runs inspect-ai (in the test extra)")
from inspect_ai.log import read_eval_log

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

INSPECT = str(Path(sys.executable).parent / "inspect")


@dataclass
class Recorder:
    """What the pass-through saw for one run."""

    run_dir: Path
    upstream: str
    observed: ObservedParams = field(default_factory=ObservedParams)
    answers: dict[str, str] = field(default_factory=dict)
    ledger: RequestLedger | None = None


def _passthrough(rec: Recorder) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        rec.observed.observe(body)
        t0 = time.perf_counter()
        async with ClientSession() as s, s.post(f"{rec.upstream}/{request.match_info['tail']}", json=body) as r:
            status, data = r.status, await r.json()
        choice = (data.get("choices") or [{}])[0]
        usage = data.get("usage") or {}
        assert rec.ledger is not None
        rec.ledger.record(body, path=request.path, status=status, latency_ms=(time.perf_counter() - t0) * 1000,
                          prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                          finish_reason=choice.get("finish_reason"), cache_hit=False)
        rec.answers[prompt_key(body)] = (choice.get("message") or {}).get("content", "")
        return web.json_response(data, status=status)

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", handle)
    return app


class _Servers:
    """aiohttp sites on 127.0.0.1, served by one event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def serve(self, app: web.Application) -> str:
        async def start() -> str:
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            port = runner.addresses[0][1]
            return f"http://127.0.0.1:{port}"

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for r in self.runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


ADAPTER = {"interceptors": [{"name": "system_message", "config": {"system_message": "Answer with a number."}},
                            {"name": "caching", "config": {"cache_dir": "CACHE"}}, {"name": "endpoint"}]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("e2e")
    servers = _Servers()
    try:
        ok = servers.serve(SimulatedModel(answers=sums([7, 11])).app())
        worse = servers.serve(SimulatedModel(answers=sums([7, 11, 13, 15, 17])).app())
        plan = {"base": (ok, "0.0"), "hot": (ok, "0.6"), "worse": (worse, "0.0")}
        recorders: dict[str, Recorder] = {}
        procs: dict[str, tuple[subprocess.Popen[bytes], list[str], Path, float]] = {}
        for name, (upstream, temperature) in plan.items():
            rec = Recorder(root / "runs" / name, upstream + "/v1")
            rec.ledger = RequestLedger(rec.run_dir)
            recorders[name] = rec
            proxy = servers.serve(_passthrough(rec))
            work = root / f"work-{name}"
            work.mkdir()
            shutil.copy2(FIXTURES / "sums_task.py", work)
            shutil.copy2(FIXTURES / "sums.jsonl", work)
            argv = [INSPECT, "eval", "sums_task.py", "--model", "openai-api/fake/fake-model",
                    "--temperature", temperature, "--display", "none"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
            env.update(FAKE_BASE_URL=proxy + "/v1", FAKE_API_KEY="sk-not-a-real-key", NO_COLOR="1")
            started = time.time()
            procs[name] = (subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
                           argv, work, started)
        for name, (proc, argv, work, started) in procs.items():
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out.decode()[-2000:]
            rec = recorders[name]
            assert rec.ledger is not None
            rec.ledger.close()
            record_run(rec.run_dir, argv=argv, workdir=work, started_at=started, finished_at=time.time(),
                       exit_code=proc.returncode, observed=rec.observed, api_url=rec.upstream,
                       model_id="fake-model", endpoint_type="chat",
                       adapter_config=json.loads(json.dumps(ADAPTER).replace("CACHE", str(rec.run_dir / "cache"))),
                       run_id=f"run-{name}", secrets=["sk-not-a-real-key"])
            (rec.run_dir / "answers.json").write_text(json.dumps(rec.answers))
        yield {name: r.run_dir for name, r in recorders.items()}
    finally:
        servers.close()


def cached_answers(run_dir: Path, key: str) -> str | None:
    """The answers callable compare takes; here backed by what the pass-through kept."""
    stored: dict[str, str] = json.loads((run_dir / "answers.json").read_text())
    return stored.get(key)


class TestRunRecord:
    def test_score_equals_the_harness_own(self, runs: dict[str, Path]) -> None:
        """The results.yaml score is the accuracy inspect-ai itself logged."""
        record = read_results(runs["base"])
        log = read_eval_log(record.harness.files[0])  # inspect-ai's own reader
        assert log.results is not None
        own = log.results.scores[0].metrics["accuracy"].value
        assert record.results.tasks["sums"].metrics["match"].scores["accuracy"].value == own == 0.8
        assert record.harness.name == "inspect-ai" and record.harness.status == "success"

    def test_observed_params_and_ledger(self, runs: dict[str, Path]) -> None:
        """The record holds the temperature seen in traffic, and every request is in requests.jsonl."""
        record = read_results(runs["hot"])
        assert record.config.params["temperature"] == 0.6
        assert record.evalproxy.observed_requests == 10
        assert len((runs["hot"] / "requests.jsonl").read_text().splitlines()) == 10

    def test_no_secret_on_disk(self, runs: dict[str, Path]) -> None:
        """The API key given to the harness is nowhere in the run directory."""
        for p in runs["base"].rglob("*"):
            if p.is_file():
                assert "sk-not-a-real-key" not in p.read_text(errors="replace")


class TestExportAndCompare:
    def test_export_two_runs(self, runs: dict[str, Path], tmp_path: Path) -> None:
        """Two runs of one model become two entries of one benchmark in processed_results.json."""
        doc = json.loads(export_runs([runs["base"], runs["worse"]], tmp_path).read_text())
        entries = doc["benchmarks"]["sums"]["models"]["fake-model"]
        assert [e["scores"]["sums_match_accuracy"] for e in entries] == [0.8, 0.5]

    def test_temperature_change_is_not_comparable(self, runs: dict[str, Path]) -> None:
        """Runs that differ only in temperature are not comparable, and the summary names temperature in words."""
        c = compare_runs(runs["base"], runs["hot"], answers=cached_answers)
        assert not c.comparable and c.exit_code == 2
        assert [x.name for x in c.checks if x.counts and not x.same] == ["generation param temperature"]
        assert "temperature 0.0 in baseline, 0.6 in candidate on 10 of 10 requests" in c.to_text()

    def test_three_changed_answers_are_listed(self, runs: dict[str, Path]) -> None:
        """Comparable runs where the model answers 3 questions differently list exactly those 3."""
        c = compare_runs(runs["base"], runs["worse"], answers=cached_answers, fail_on="regression")
        assert c.comparable, c.to_text()
        assert c.changed_total == 3 and c.pairs_compared == 10
        assert sorted((ch.baseline, ch.candidate) for ch in c.changed) == [("13", "14"), ("15", "16"), ("17", "18")]
        row = next(r for r in c.scores if r.score == "accuracy")
        assert row.delta == pytest.approx(-0.3) and row.method == "mcnemar-exact"
        assert row.p_value == pytest.approx(0.25) and not row.significant
        assert c.exit_code == 0

    def test_changed_answers_from_harness_samples(self, runs: dict[str, Path]) -> None:
        """Without an answers callable, the harness's own per-sample answers show the same 3 changes."""
        c = compare_runs(runs["base"], runs["worse"])
        assert sorted(ch.key for ch in c.changed) == ["sums/q5", "sums/q6", "sums/q7"]

    def test_html_page(self, runs: dict[str, Path]) -> None:
        """The HTML page opens with its verdict, then has the scores, what differs and the samples, and no script."""
        page = compare_runs(runs["base"], runs["hot"], answers=cached_answers).to_html()
        assert '<div class="word">NOT COMPARABLE</div>' in page
        assert page.index('id="verdict"') < page.index('id="scores"') < page.index('id="comparable"') < page.index(
            'id="changed"')
        assert "<script" not in page.lower()
