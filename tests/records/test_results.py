"""results.yaml: model, redaction, atomic write and NeMo round trip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records.harnesses.base import add_score
from evalproxy.records.results import (
    HarnessInfo,
    Results,
    ScoreStats,
    build_record,
    git_hash,
    read_results,
    redact_command,
    write_results,
)


def _results() -> Results:
    r = Results()
    add_score(r.tasks, "gsm8k", "exact_match", "exact_match", 0.75,
              ScoreStats(count=4, sum=3, mean=0.75, min=0, max=1, stddev=0.433, stderr=0.25))
    return r


class TestRedaction:
    @pytest.mark.parametrize(
        ("command", "hidden"),
        [
            (["lm_eval", "--model_args", "model=m,api_key=sk-live-123,base_url=x"], "sk-live-123"),
            (["simple_evals", "--api-key", "sk-live-123"], "sk-live-123"),
            ("curl -H 'Authorization: Bearer abc.def' http://x", "abc.def"),
            (["tool", "--token=tok-999"], "tok-999"),
            (["tool", "--x", "the-secret"], "the-secret"),
        ],
    )
    def test_secrets_never_appear_in_the_command(self, command: list[str] | str, hidden: str) -> None:
        """Secret values in flags, key=value pairs, bearer headers or given explicitly are replaced by ***."""
        out = redact_command(command, secrets=["the-secret"])
        assert hidden not in out
        assert "***" in out

    def test_env_var_references_are_kept(self) -> None:
        """A ``$VAR`` after a secret flag names the secret without holding it, so it stays."""
        assert "$OPENAI_API_KEY" in redact_command(["tool", "--api-key", "$OPENAI_API_KEY"])



class TestRecord:
    def test_written_file_has_nemo_shape(self, tmp_path: Path) -> None:
        """The YAML has NeMo's top-level keys and tasks -> metrics -> scores -> {value, stats}."""
        rec = build_record(command=["lm_eval", "--tasks", "gsm8k"], output_dir=tmp_path, params={"temperature": 0.0},
                           results=_results(), api_url="http://127.0.0.1:1/v1", model_id="m", endpoint_type="chat",
                           adapter_config={"interceptors": [{"name": "caching", "config": {"api_key": "k"}}]},
                           run_id="r1", harness=HarnessInfo(name="lm-evaluation-harness", status="success"))
        path = write_results(tmp_path, rec)
        data = yaml.safe_load(path.read_text())
        assert list(data)[:5] == ["command", "config", "results", "target", "git_hash"]
        score = data["results"]["tasks"]["gsm8k"]["metrics"]["exact_match"]["scores"]["exact_match"]
        assert score["value"] == 0.75 and score["stats"]["stderr"] == 0.25 and score["stats"]["count"] == 4
        assert data["config"]["params"] == {"temperature": 0.0}
        assert data["target"]["api_endpoint"]["adapter_config"]["interceptors"][0]["config"]["api_key"] == "***"
        assert data["evalproxy"]["run_ids"] == ["r1"] and data["evalproxy"]["version"]
        assert "git_hash" in data and data["git_hash"] is None  # as NeMo writes it

    def test_endpoint_url_is_redacted(self, tmp_path: Path) -> None:
        """The endpoint URL is shown as every URL is (core's redact_url): credentials and key values as ***."""
        rec = build_record(command="x", output_dir=tmp_path, params={},
                           api_url="https://u:p@host:8443/v1/chat/completions?api-key=zzz&v=2")
        assert rec.target.api_endpoint.url == "https://***@host:8443/v1/chat/completions?api-key=***&v=2"

    def test_round_trip(self, tmp_path: Path) -> None:
        """What write_results wrote, read_results reads back equal."""
        rec = build_record(command="x", output_dir=tmp_path, params={"seed": 1}, results=_results())
        write_results(tmp_path, rec)
        assert read_results(tmp_path) == rec

    def test_write_is_atomic_and_leaves_no_temp_files(self, tmp_path: Path) -> None:
        """Rewriting replaces the file whole and leaves no temporary file behind."""
        for i in range(3):
            write_results(tmp_path, build_record(command=f"run {i}", output_dir=tmp_path, params={}))
        assert [p.name for p in tmp_path.iterdir()] == ["results.yaml"]
        assert read_results(tmp_path).command == "run 2"

    def test_reads_nemo_evaluator_results_yml(self, fixtures: Path) -> None:
        """A results.yml written by nemo-evaluator's own models reads, keeping its extra keys."""
        rec = read_results(fixtures / "nemo_evaluator" / "results.yml")
        assert rec.results.flat() == {"sums_score_micro": 0.8}
        assert rec.git_hash is None
        assert rec.config.model_extra == {"type": "sums"}

    def test_missing_or_bad_file_is_a_config_error(self, tmp_path: Path) -> None:
        """A run dir without results.yaml, or with YAML that is not a mapping, raises ConfigError naming the file."""
        with pytest.raises(ConfigError, match=r"no results\.yaml"):
            read_results(tmp_path)
        (tmp_path / "results.yaml").write_text("- 1\n")
        with pytest.raises(ConfigError, match=r"results\.yaml"):
            read_results(tmp_path)

    def test_git_hash_of_a_work_tree(self, tmp_path: Path) -> None:
        """The commit of a git work tree is recorded; a plain directory gives None (NeMo's ``git_hash: null``)."""
        assert git_hash(tmp_path) is None
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-q",
                        "--allow-empty", "-m", "x"], check=True)
        assert len(git_hash(tmp_path) or "") == 40
