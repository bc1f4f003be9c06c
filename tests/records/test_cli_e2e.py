"""End to end through the command line, in real processes: ``evalproxy run`` with inspect-ai against the fake model,
then ``evalproxy export``, ``evalproxy compare`` and ``evalproxy cache explain`` on the run directories it wrote.

Four runs are made once per module, at the same time: ``base`` (temperature 0), ``hot`` (temperature 0.6),
``worse`` (temperature 0, a model that gets 6 more sums wrong: a regression beyond noise, McNemar p = 0.031) and
``prompt`` (the base model with another system prompt).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalproxy.cli import _CachedAnswers
from evalproxy.records import read_ledger, read_results
from tests.browser import CHROMIUM, dump_dom
from tests.procs import free_port, wait_http_up

from .conftest import FIXTURES

pytest.importorskip("inspect_ai", reason="the end-to-end test runs inspect-ai (in the test extra)")
from inspect_ai.log import read_eval_log

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

INSPECT = str(Path(sys.executable).parent / "inspect")
CONFIG = """\
interceptors:
  - name: system_message
    config: {system_message: "Answer with a number."}
  - name: caching
    config: {save_requests: true}
  - name: endpoint
"""
NEW_PROMPT = "Reply with digits only."



def _evalproxy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
    return subprocess.run([sys.executable, "-m", "evalproxy", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("cli-e2e")
    fakes, upstreams = [], []
    for wrong in ("7,11", "7,11,13,15,17,19,21,23"):
        port = free_port()
        fakes.append(subprocess.Popen(
            [sys.executable, "-m", "evalproxy.simulator", "--port", str(port), "--wrong", wrong],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        upstreams.append(f"http://127.0.0.1:{port}/v1")
    try:
        for fake, upstream in zip(fakes, upstreams, strict=True):
            wait_http_up(f"{upstream}/models", fake)
        cfg, cfg_prompt = root / "adapter.yaml", root / "adapter-prompt.yaml"
        cfg.write_text(CONFIG)
        cfg_prompt.write_text(CONFIG.replace("Answer with a number.", NEW_PROMPT))
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
        env.update(OPENAI_API_KEY="sk-not-a-real-key", NO_COLOR="1")
        procs = {}
        for name, temperature, upstream, config in (
                ("base", "0.0", upstreams[0], cfg), ("hot", "0.6", upstreams[0], cfg),
                ("worse", "0.0", upstreams[1], cfg), ("prompt", "0.0", upstreams[0], cfg_prompt)):
            work = root / f"work-{name}"
            work.mkdir()
            shutil.copy2(FIXTURES / "sums_task.py", work)
            shutil.copy2(FIXTURES / "sums.jsonl", work)
            argv = [sys.executable, "-m", "evalproxy", "run", "-c", str(config), "--upstream", upstream,
                    "--model-id", "fake-model", "-o", str(root / "runs" / (name + "-{model}-{date}")),
                    "--log-level", "WARNING", "--",
                    INSPECT, "eval", "sums_task.py", "--model", "openai-api/fake/fake-model",
                    "--model-base-url", "{proxy_url}", "--temperature", temperature, "--display", "none"]
            procs[name] = subprocess.Popen(argv, cwd=work, env={**env, "FAKE_API_KEY": "sk-not-a-real-key"},
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        dirs = {}
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out.decode()[-3000:]
            (found,) = (root / "runs").glob(f"{name}-fake-model-2*")
            dirs[name] = found
        yield dirs
    finally:
        for fake in fakes:
            fake.terminate()
            fake.wait(10)


def test_run_writes_results_with_the_harness_score(runs: dict[str, Path]) -> None:
    """`evalproxy run -- inspect eval` writes results.yaml into the templated run dir, scored as inspect scored it."""
    record = read_results(runs["base"])
    log = read_eval_log(record.harness.files[0])  # inspect-ai's own reader
    assert log.results is not None
    own = log.results.scores[0].metrics["accuracy"].value
    assert record.results.tasks["sums"].metrics["match"].scores["accuracy"].value == own == 0.8
    assert record.config.params["temperature"] == 0.0 and record.evalproxy.observed_requests == 10


def test_ledger_has_what_the_proxy_saw(runs: dict[str, Path]) -> None:
    """Every request is in requests.jsonl with its cache key, slot, status, tokens and finish reason."""
    entries = list(read_ledger(runs["hot"]))
    assert len(entries) == 10
    assert all(e.cache_key and e.slot is not None and e.status == 200 and e.cache_hit is False for e in entries)
    assert {(e.completion_tokens, e.finish_reason) for e in entries} == {(1, "stop")}  # one number, as answered
    assert all(isinstance(e.prompt_tokens, int) and e.prompt_tokens > 0 for e in entries)
    answers = _CachedAnswers()  # what compare reads: the ledger's cache key and slot, looked up in the run's cache
    try:
        assert all((answers(runs["hot"], e.prompt_key) or "").isdigit() for e in entries)
    finally:
        answers.close()


def test_export_two_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    """`evalproxy export` turns the two runs into one processed_results.json with an entry for each."""
    done = _evalproxy("export", str(runs["base"]), str(runs["hot"]), "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "processed_results.json").read_text())
    entries = doc["benchmarks"]["sums"]["models"]["fake-model"]
    assert len(entries) == 2 and all(e["scores"]["sums_match_accuracy"] == 0.8 for e in entries)


def test_compare_names_temperature(runs: dict[str, Path], tmp_path: Path) -> None:
    """`evalproxy compare` of runs differing only in temperature exits 2 and says so, naming temperature."""
    page, doc = tmp_path / "c.html", tmp_path / "c.json"
    done = _evalproxy("compare", str(runs["base"]), str(runs["hot"]), "--html", str(page), "--json", str(doc))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "temperature 0.0 in baseline, 0.6 in candidate on 10 of 10 requests" in done.stdout
    assert "not comparable" in page.read_text() and json.loads(doc.read_text())


def test_compare_of_a_worse_model_is_a_regression(runs: dict[str, Path], tmp_path: Path) -> None:
    """`evalproxy compare --fail-on regression --show-flips` of the worse model says REGRESSION first (text and
    page), exits 1, and lists the 6 flips with their questions, targets and both answers, read from inspect's log."""
    page, doc = tmp_path / "cmp" / "worse.html", tmp_path / "cmp" / "worse.json"
    done = _evalproxy("compare", str(runs["base"]), str(runs["worse"]), "--fail-on", "regression", "--show-flips",
                      "--html", str(page), "--json", str(doc))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("REGRESSION: sums match.accuracy 0.8 -> 0.2 (delta -0.6, 95% CI [")
    assert "mcnemar-exact over 10 paired samples, p=0.0312" in done.stdout.splitlines()[0]
    assert "flips: 6 right -> wrong, 0 wrong -> right" in done.stdout
    assert ('  [sums/q5] right -> wrong (match)\n      question:  "What is 5 + 8? Answer with the number only."\n'
            '      target:    "13"\n      baseline:  "13" (right)\n      candidate: "14" (wrong)') in done.stdout
    c = json.loads(doc.read_text())
    assert c["verdict"] == "regression" and c["paired_samples"] == 10 and c["changed_total"] == 6
    assert [s["sample_id"] for s in c["samples"] if s["flip"] == "regressed"] == ["q5", "q6", "q7", "q8", "q9", "q10"]
    if CHROMIUM is not None:  # the page as a browser shows it: the verdict block comes first and says REGRESSION
        dom = _dump_dom(page, tmp_path)
        assert re.search(r'<div id="verdict" class="headline regression">\s*<div class="word">REGRESSION</div>', dom)
        assert dom.index('id="verdict"') < dom.index('id="scores"') and "What is 5 + 8?" in dom
        assert '<svg id="deltas"' in dom


def test_compare_of_two_system_prompts_with_vary(runs: dict[str, Path]) -> None:
    """Two system prompts are NOT COMPARABLE (exit 2) until declared with --vary system_message: then comparable,
    the varied prompt named, and paired over the 10 samples both runs graded."""
    done = _evalproxy("compare", str(runs["base"]), str(runs["prompt"]))
    assert done.returncode == 2 and done.stdout.startswith("NOT COMPARABLE: ")
    assert "system_message.system_message" in done.stdout.splitlines()[0]
    done = _evalproxy("compare", str(runs["base"]), str(runs["prompt"]), "--vary", "system_message")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("NO SIGNIFICANT CHANGE: ")
    assert f'  - [varied] system_message.system_message: "Answer with a number." in baseline, "{NEW_PROMPT}" in ' \
           "candidate" in done.stdout
    assert "mcnemar-exact over 10 paired samples, p=1" in done.stdout
    assert "answers changed: 0 of 10 paired samples (from the harness's per-sample answers)" in done.stdout




def _dump_dom(page: Path, tmp_path: Path) -> str:
    return dump_dom(page, tmp_path / "chromium")


def test_cache_explain_names_the_changed_field(runs: dict[str, Path], tmp_path: Path) -> None:
    """`evalproxy cache explain` finds the stored request nearest to a changed one and names the field."""
    request = {"model": "fake-model", "temperature": 0.0, "max_tokens": 999,
               "messages": [{"role": "system", "content": "Answer with a number."},
                            {"role": "user", "content": "What is 1 + 1?"}]}
    req = tmp_path / "req.json"
    req.write_text(json.dumps(request))
    done = _evalproxy("cache", "explain", str(runs["base"]), str(req))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stored request #" in done.stdout and "max_tokens" in done.stdout
