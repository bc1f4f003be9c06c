"""facts: config.type, NeMo-named params with where each came from, the endpoint type from the requests sent, and
the expected answer count behind the status line's total."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalproxy.adapter.config import load_config
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records.facts import expected_answers, record_facts
from evalproxy.records.harnesses import read_harness_output
from evalproxy.records.harnesses.base import RunFacts
from evalproxy.records.observed import ObservedParams
from evalproxy.records.run import launcher_command

from .conftest import copy_fixture

LAUNCHER = """\
target:
  api_endpoint: {url: "http://127.0.0.1:9/v1/chat/completions", model_id: m}
evaluation:
  nemo_evaluator_config:
    config:
      params: {parallelism: 2}
  tasks:
    - name: sums
      nemo_evaluator_config:
        config:
          params: {temperature: 0.6, max_new_tokens: 8192, extra: {seed: 3}}
"""


def _completions_run() -> ObservedParams:
    obs = ObservedParams()
    for _ in range(3):
        obs.observe({"prompt": "What is 1 + 4?", "max_tokens": 16, "temperature": 0.0}, "/v1/completions")
    return obs


class TestRecordFacts:
    def test_a_completions_run_is_recorded_as_completions(self) -> None:
        """Requests that all went to /v1/completions make the run (and each task) 'completions', whatever the
        config said (issue 20: a local-completions run was recorded as chat)."""
        facts = record_facts(harness=RunFacts(), observed=_completions_run(),
                             results=read_harness_output(["x"]).results, configured_endpoint="chat")
        assert facts.endpoint_type == "completions" and facts.extra["endpoint_type_from"] == "requests"
        assert facts.extra["endpoint_paths"] == {"/v1/completions": 3}

    def test_params_in_nemo_names_with_their_source(self, workdir: Path) -> None:
        """The harness's own record wins, the wire fills what it lacks, the launcher what both lack; --task is the
        type; each param's source is in params_from."""
        copy_fixture("lm_eval_group", workdir)
        harness = read_harness_output(["lm_eval", "--output_path", "lm_eval_group"], workdir=workdir, started_at=0)
        obs = ObservedParams()
        obs.observe({"messages": [], "temperature": 0.0, "top_p": 0.9, "max_tokens": 16}, "/v1/chat/completions")
        facts = record_facts(harness=harness.facts, observed=obs, results=harness.results,
                             launcher={"limit_samples": 5, "temperature": 0.6})
        assert facts.params == {"temperature": 0.0, "max_new_tokens": 16, "parallelism": 1, "task": "arith",
                                "top_p": 0.9, "limit_samples": 5}
        assert facts.extra["params_from"] == {"temperature": "harness", "max_new_tokens": "harness",
                                              "parallelism": "harness", "task": "harness", "top_p": "requests",
                                              "limit_samples": "launcher"}
        assert facts.type == "arith" and facts.extra["type_from"] == "harness"
        assert facts.extra["endpoint_types"] == {"sums": "chat", "sums_big": "chat", "arith": "chat"}
        assert set(harness.results.groups) == {"arith"}
        by_task = record_facts(harness=harness.facts, observed=obs, results=harness.results, task="my_task")
        assert by_task.type == "my_task" and by_task.extra["type_from"] == "--task"

    def test_an_lm_eval_group_without_aggregate_is_still_a_group(self, workdir: Path) -> None:
        """A group lm-eval reports in group_subtasks but scores no aggregate for is kept under groups (issue 20:
        groups were always empty)."""
        import json

        src = workdir / "out" / "m"
        src.mkdir(parents=True)
        (fixture,) = (Path(__file__).parent / "fixtures" / "lm_eval_group" / "fake-model").glob("results_*.json")
        data = json.loads(fixture.read_text())
        del data["results"]["arith"]
        data.pop("groups", None)
        (src / fixture.name).write_text(json.dumps(data))
        r = read_harness_output(["lm_eval", "--output_path", "out"], workdir=workdir, started_at=0)
        assert set(r.results.groups) == {"arith"} and set(r.results.tasks) == {"sums", "sums_big"}
        assert r.facts.type == "arith"


class TestLauncherParams:
    def test_placeholders_are_filled_and_proxy_url_kept(self, tmp_path: Path) -> None:
        """{params.*} take the task's params (over the file's), {proxy_url} stays as written."""
        cfg = tmp_path / "launcher.yaml"
        cfg.write_text(LAUNCHER)
        loaded = load_config(cfg, task="sums")
        assert loaded.run_params == {"parallelism": 2, "temperature": 0.6, "max_new_tokens": 8192,
                                     "extra": {"seed": 3}}
        cmd = launcher_command(loaded, ["h", "--base", "{proxy_url}", "--t={params.temperature}",
                                        "--n", "{params.max_new_tokens}", "-j{params.parallelism}",
                                        "--seed", "{params.extra.seed}"])
        assert cmd == ["h", "--base", "{proxy_url}", "--t=0.6", "--n", "8192", "-j2", "--seed", "3"]

    def test_params_the_command_does_not_take_are_refused(self, tmp_path: Path) -> None:
        """A task param that no placeholder gives the harness is refused, naming it (issue 20: temperature 0.6 and
        max_new_tokens 8192 were silently not applied)."""
        cfg = tmp_path / "launcher.yaml"
        cfg.write_text(LAUNCHER)
        loaded = load_config(cfg, task="sums")
        with pytest.raises(ConfigError, match=r"temperature, max_new_tokens, extra\.seed would not reach") as e:
            launcher_command(loaded, ["h", "-j{params.parallelism}"])
        assert "evaluation.tasks[sums].nemo_evaluator_config.config.params" in str(e.value)
        with pytest.raises(ConfigError, match=r"\{params\.top_p\} in the command, but the config sets no"):
            launcher_command(loaded, ["h", "{params.top_p}"])

    def test_the_cli_refuses_before_running(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`evalproxy run -c launcher --task sums -- CMD` without the placeholders exits 2 and runs nothing."""
        from evalproxy.cli import main

        cfg = tmp_path / "launcher.yaml"
        cfg.write_text(LAUNCHER)
        marker = tmp_path / "ran"
        code = main(["run", "-c", str(cfg), "--task", "sums", "-o", str(tmp_path / "run"), "--", "touch",
                     str(marker)])
        assert code == 2 and not marker.exists()
        assert "would not reach the harness" in capsys.readouterr().err


class TestExpectedAnswers:
    @pytest.mark.parametrize(("argv", "params", "expected"), [
        (["lm_eval", "--tasks", "a,b", "--limit", "10"], {}, 20),
        (["lm_eval", "--tasks", "a", "--limit", "0.5"], {}, None),
        (["inspect", "eval", "t.py", "--limit", "5", "--epochs", "3"], {}, 15),
        (["inspect", "eval", "t.py", "--limit", "11-20"], {}, 10),
        (["nemo-evaluator", "run_eval"], {"limit_samples": 7}, 7),
        (["./eval.sh"], {}, None),
    ])
    def test_total_from_the_command_or_the_launcher(self, argv: list[str], params: dict[str, int],
                                                     expected: int | None) -> None:
        """--limit (times lm-eval tasks or inspect epochs) or limit_samples gives the total; a fraction none."""
        assert expected_answers(argv, params) == expected
