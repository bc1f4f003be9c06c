"""`evalproxy run` end to end with real harnesses against the simulator (inspect-ai from the test env; lm-eval and
nemo-evaluator from ``.venv-harnesses``, as users run a harness in an env of its own): what results.yaml records
(endpoint type, config.type, NeMo-named params, a re-runnable command), the report opening with the scores (in
Chromium), the status line's total, and harness results that cannot be read. The runs are made once per module, at
the same time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalproxy.records import read_results
from tests.browser import CHROMIUM, MISSING, chromium
from tests.procs import free_port, wait_http_up

from .conftest import FIXTURES

pytest.importorskip("inspect_ai", reason="the end-to-end test runs inspect-ai (in the test extra)")

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

Runs = dict[str, tuple[Path, subprocess.CompletedProcess[str]]]

INSPECT = str(Path(sys.executable).parent / "inspect")
# .ci/setup makes the harnesses' venv in the checkout; EVALPROXY_HARNESSES names another (a worktree's tests).
HARNESSES = Path(os.environ.get("EVALPROXY_HARNESSES", Path(__file__).resolve().parents[2] / ".venv-harnesses"))
LM_EVAL = HARNESSES / "bin" / "lm_eval"
SHOTS = os.environ.get("EVALPROXY_SHOTS")
"""Where the screenshot goes to be looked at (docs/img/report-scores.png was made so); the test's tmp dir else."""
ADAPTER = """\
server: {status_interval: 0.2}
interceptors:
  - name: caching
    config: {save_requests: true}
  - name: endpoint
  - name: response_stats
post_eval_hooks:
  - name: post_eval_report
    config: {report_types: [html, json]}
"""
LAUNCHER = """\
server: {{status_interval: 0.2}}
target:
  api_endpoint: {{url: "{url}/chat/completions", model_id: fake-model, type: chat}}
evaluation:
  tasks:
    - name: sums
      nemo_evaluator_config:
        config:
          params: {{temperature: 0.0, max_new_tokens: 16, limit_samples: 6}}
"""
BROKEN_INSPECT = """#!/bin/sh
# Writes an inspect-ai log that cannot be read (a .eval zip whose header is not JSON), as a failed reader sees it.
mkdir -p logs && cd logs && printf 'not json' > header.json && python3 -m zipfile -c broken.eval header.json
"""


BYOB_SUMS = """\
import os

from nemo_evaluator.contrib.byob import ScorerInput, benchmark, scorer

HERE = os.path.dirname(os.path.abspath(__file__))


@benchmark(name="sums", dataset=os.path.join(HERE, "sums.jsonl"), prompt="{input}", target_field="target",
           endpoint_type="chat")
@scorer
def exact(sample: ScorerInput) -> dict:
    return {"correct": sample.response.strip() == str(sample.target).strip()}
"""


def _nemo_benchmark(work: Path) -> dict[str, str] | None:
    """Compile a BYOB benchmark of the sums into ``work/pkgs/core_evals`` (the namespace nemo-evaluator finds
    harnesses in, without installing into its env); the environment its run needs, or None without nemo-evaluator.

    nemo-evaluator 0.2.8's BYOB runner writes ``<out>/<benchmark>/byob_results.json`` while the parser it compiles
    reads ``<out>/byob_results.json`` (its own run then fails, writing no results.yml): the compiled parser is
    pointed at the runner's file."""
    byob = HARNESSES / "bin" / "nemo-evaluator-byob"
    if not byob.exists():
        return None
    (work / "sums_byob.py").write_text(BYOB_SUMS)
    done = subprocess.run([str(byob), "sums_byob.py", "--no-install", "--install-dir", "byob"], cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    pkg = work / "pkgs" / "core_evals" / "byob_sums"
    shutil.copytree(work / "byob" / "byob_sums" / "nemo_evaluator" / "byob_sums", pkg)
    parser = pkg / "output.py"
    parser.write_text(parser.read_text().replace('os.path.join(output_dir, "byob_results.json")',
                                                 'os.path.join(output_dir, "sums", "byob_results.json")'))
    return {"PATH": f"{HARNESSES / 'bin'}:{os.environ['PATH']}",  # its command runs `python`: the harness's
            "PYTHONPATH": os.pathsep.join(filter(None, [str(work / "pkgs"), os.environ.get("PYTHONPATH")]))}


def _lm_eval_ready() -> bool:
    if not LM_EVAL.exists():
        return False
    done = subprocess.run([str(HARNESSES / "bin" / "python"), "-c", "import lm_eval, tenacity"],
                          capture_output=True, timeout=60)
    return done.returncode == 0


def _commands(root: Path, url: str, lm_ready: bool) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (evalproxy run options, harness command)."""
    inspect = [INSPECT, "eval", "sums_task.py", "--model", "openai-api/fake/fake-model", "--model-base-url",
               "{proxy_url}", "--display", "none"]
    out = {
        "inspect_json": (["-c", str(root / "launcher.yaml"), "--task", "sums"],
                         [*inspect, "--temperature", "{params.temperature}", "--max-tokens",
                          "{params.max_new_tokens}", "--limit", "{params.limit_samples}", "--log-format", "json"]),
        "inspect_eval": (["-c", str(root / "adapter.yaml"), "--upstream", url],
                         [*inspect, "--temperature", "0", "--limit", "6"]),
        "unreadable": (["-c", str(root / "adapter.yaml"), "--upstream", url], ["./inspect", "eval", "x.py"]),
    }
    if lm_ready:
        for name, model, path in (("lm_chat", "local-chat-completions", "chat/completions"),
                                  ("lm_completions", "local-completions", "completions")):
            args = (f"model=fake-model,base_url={{proxy_url}}/{path},num_concurrent=2,tokenized_requests=False,"
                    "tokenizer_backend=None")
            extra = ["--apply_chat_template"] if "chat" in model else []
            out[name] = (["-c", str(root / "adapter.yaml"), "--upstream", url],
                         [str(LM_EVAL), "--model", model, "--model_args", args, "--tasks", "sums", "--include_path",
                          "lm_tasks", "--output_path", "lm_out", "--log_samples", "--limit", "6", *extra])
    return out


def _workdir(root: Path, name: str) -> Path:
    work = root / f"work-{name}"
    work.mkdir()
    shutil.copy2(FIXTURES / "sums_task.py", work)
    shutil.copy2(FIXTURES / "sums.jsonl", work)
    tasks = work / "lm_tasks"
    shutil.copytree(FIXTURES / "lm_tasks", tasks)
    for f in tasks.glob("*.yaml"):
        f.write_text(f.read_text().replace("/tmp/gen/lm_tasks/sums.jsonl", str(tasks / "sums.jsonl")))
    script = work / "inspect"
    script.write_text(BROKEN_INSPECT)
    script.chmod(0o755)
    return work


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("run-e2e")
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "evalproxy.simulator", "--port", str(port), "--sums", "--wrong",
                             "7,11"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_http_up(f"{url}/models", fake)
        (root / "adapter.yaml").write_text(ADAPTER)
        (root / "launcher.yaml").write_text(LAUNCHER.format(url=url))
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
        env.update(OPENAI_API_KEY="sk-not-a-real-key", FAKE_API_KEY="sk-not-a-real-key", NO_COLOR="1",
                   HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
        procs = {}
        commands = _commands(root, url, _lm_eval_ready())
        nemo_work = _workdir(root, "nemo")
        nemo_env = _nemo_benchmark(nemo_work)
        if nemo_env is not None:
            commands["nemo"] = (["-c", str(root / "adapter.yaml"), "--upstream", url],
                                [str(HARNESSES / "bin" / "nemo-evaluator"), "run_eval", "--eval_type",
                                 "byob_sums.sums", "--model_url", "{proxy_url}/chat/completions", "--model_id",
                                 "fake-model", "--model_type", "chat", "--output_dir", str(nemo_work / "nemo_out"),
                                 "--overrides", "config.params.limit_samples=6,config.params.parallelism=2"])
        for name, (opts, cmd) in commands.items():
            argv = [sys.executable, "-m", "evalproxy", "run", *opts, "-o", str(root / "runs" / name),
                    "--progress", "line", "--", *cmd]
            work = nemo_work if name == "nemo" else _workdir(root, name)
            procs[name] = subprocess.Popen(argv, cwd=work, env={**env, **(nemo_env if name == "nemo" else {})},
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=240)
            done[name] = (root / "runs" / name, subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        yield done
    finally:
        fake.terminate()
        fake.wait(10)


def _ok(runs: Runs, name: str) -> Path:
    if name not in runs:
        pytest.skip(f"{name}: its harness is not ready in {HARNESSES} (lm-eval with its [api] extra, "
                    "nemo-evaluator 0.2.8)")
    run_dir, done = runs[name]
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize(("name", "endpoint", "params"), [
    ("inspect_json", "chat", {"temperature": 0.0, "max_new_tokens": 16, "limit_samples": 6, "task": "sums"}),
    ("inspect_eval", "chat", {"temperature": 0.0, "limit_samples": 6, "task": "sums", "max_new_tokens": None}),
    ("lm_chat", "chat", {"temperature": 0.0, "max_new_tokens": 16, "limit_samples": 6, "parallelism": 2}),
    ("lm_completions", "completions", {"temperature": 0.0, "max_new_tokens": 16, "limit_samples": 6,
                                       "parallelism": 2}),
])
def test_record_says_what_happened(runs: Runs, name: str,
                                   endpoint: str, params: dict[str, object]) -> None:
    """results.yaml has the endpoint type of the requests sent (per run and task), config.type, NeMo-named params
    with their source, the command as written with {proxy_url}, and the harness's own score (4 of 6 right)."""
    record = read_results(_ok(runs, name))
    assert record.target.api_endpoint.type == endpoint and record.evalproxy.endpoint_types == {"sums": endpoint}
    assert record.config.model_extra == {"type": "sums"}
    for key, value in params.items():
        assert record.config.params.get(key) == value, (key, record.config.params)
        assert type(record.config.params.get(key)) is type(value), (key, record.config.params)  # 6, not 6.0
    assert set(record.evalproxy.params_from) == set(record.config.params)
    assert "{proxy_url}" in record.command and "127.0.0.1" not in record.command
    values = [s.value for m in record.results.tasks["sums"].metrics.values() for s in m.scores.values()]
    assert values == [pytest.approx(4 / 6)]
    assert record.git_hash is None or len(record.git_hash) == 40


def test_nemo_evaluator_record(runs: Runs) -> None:
    """A nemo-evaluator run: its results.yml's type, params and score, the endpoint type of the requests sent, the
    command as written."""
    record = read_results(_ok(runs, "nemo"))
    assert record.config.model_extra == {"type": "byob_sums.sums"} and record.evalproxy.type_from == "harness"
    assert {k: record.config.params[k] for k in ("limit_samples", "parallelism", "task", "temperature")} == {
        "limit_samples": 6, "parallelism": 2, "task": "sums", "temperature": 0.0}
    assert set(record.evalproxy.params_from.values()) == {"harness"}
    assert record.target.api_endpoint.type == "chat" and record.evalproxy.endpoint_types == {"sums": "chat"}
    assert record.results.tasks["sums"].metrics["pass@1"].scores["correct"].value == pytest.approx(4 / 6, abs=1e-4)
    assert "{proxy_url}/chat/completions" in record.command and record.harness.name == "nemo-evaluator"


def test_launcher_task_params_reach_the_harness(runs: Runs,
                                                ) -> None:
    """The launcher task's params went into the command (and so to the wire); --task is the type."""
    record = read_results(_ok(runs, "inspect_json"))
    assert "--max-tokens 16" in record.command and "--limit 6" in record.command
    assert record.evalproxy.type_from == "--task"
    assert record.evalproxy.observed_params["max_tokens"] == 16 and record.evalproxy.observed_requests == 6


def test_status_lines_have_total_and_percent(runs: Runs) -> None:
    """With --progress line, the status comes as plain lines (no redraw) with the total --limit gives."""
    _, done = runs["inspect_eval"]
    assert "\x1b[2K" not in done.stderr and "\r" not in done.stderr
    assert "6/6 requests 100% done" in done.stderr


def test_unreadable_results_warn_and_fail(runs: Runs) -> None:
    """A harness log that cannot be read is a warning on stderr and exit 3, not a quiet empty record (issue 20)."""
    run_dir, done = runs["unreadable"]
    assert done.returncode == 3, done.stderr[-2000:]
    assert "warning: no scores recorded (error)" in done.stderr and "broken.eval" in done.stderr
    assert read_results(run_dir).harness.status == "error"


def test_report_opens_with_the_scores(runs: Runs) -> None:
    """report.html and evalproxy_report.json give each task's score, interval and sample count before the proxy's
    statistics; report.json keeps NeMo's list shape."""
    run_dir = _ok(runs, "inspect_eval")
    html = (run_dir / "report.html").read_text()
    assert html.index('id="scores"') < html.index('id="summary"') < html.index('id="statistics"')
    details = json.loads((run_dir / "evalproxy_report.json").read_text())
    (row,) = details["scores"]["rows"]
    assert (row["task"], row["metric"], row["count"]) == ("sums", "match", 6)
    assert row["value"] == pytest.approx(4 / 6) and row["ci95"][0] < row["value"] < row["ci95"][1] <= 1.0  # Wilson's
    assert isinstance(json.loads((run_dir / "report.json").read_text()), list)


@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
def test_report_scores_in_chromium(runs: Runs,
                                   tmp_path: Path) -> None:
    """Chromium renders the score table at the top of report.html (a screenshot is saved for a person to see)."""
    page = _ok(runs, "inspect_eval") / "report.html"
    done = chromium("--dump-dom", page.as_uri(), user_dir=tmp_path / "u1")
    assert done.returncode == 0, done.stderr
    dom = done.stdout
    table = dom[dom.index('id="score-table"'):dom.index("</table>", dom.index('id="score-table"'))]
    assert "sums" in table and "0.6667" in table and "[" in table
    shots = Path(SHOTS) if SHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "report-scores.png"
    done = chromium("--window-size=1280,900", f"--screenshot={shot}", page.as_uri(), user_dir=tmp_path / "u2")
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr
