"""What the export destinations read of a run: curated statistics, stable ids, samples joined with their requests."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from evalproxy.adapter.core import loads
from evalproxy.records import build_record, write_results
from evalproxy.records.export_data import Exchange, SampleRow, _join, curated_stats, read_run, stable_id
from evalproxy.records.results import HarnessInfo


class TestCuratedStats:
    def test_stable_names_only(self, tmp_path: Path) -> None:
        """Only the curated statistics come out, under their own names: no run-keyed entries, no timestamps."""
        (tmp_path / "eval_factory_metrics.json").write_bytes(orjson.dumps({
            "response_stats": {"count": 3, "avg_latency_ms": 5.5, "first_request_time": 1.7e9,
                               "runs": {"20260101T000000Z-abc": {"count": 3}}, "status_codes": {"200": 3}},
            "caching": {"hits": 1, "misses": 2, "hit_ratio": 1 / 3, "cache_dir": "/x", "available": True},
        }))
        assert curated_stats(tmp_path) == {"requests": 3.0, "latency_ms_avg": 5.5, "cache_hits": 1.0,
                                           "cache_misses": 2.0, "cache_hit_ratio": 1 / 3}

    def test_missing_or_broken_file_gives_none(self, tmp_path: Path) -> None:
        """A run without statistics, or with a file that is not JSON, has no proxy statistics (no error)."""
        assert curated_stats(tmp_path) == {}
        (tmp_path / "eval_factory_metrics.json").write_text("{not json")
        assert curated_stats(tmp_path) == {}

    def test_a_statistics_file_past_the_size_bound_is_not_read(self, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """A run dir's statistics file larger than the bound (lowered here) gives no statistics, as a broken one
        does: it is never loaded whole."""
        (tmp_path / "eval_factory_metrics.json").write_bytes(orjson.dumps({
            "response_stats": {"count": 3, "avg_latency_ms": 5.5, "pad": "x" * 600}}))
        assert curated_stats(tmp_path)["requests"] == 3.0
        monkeypatch.setattr(loads, "MAX_FILE_BYTES", 512)
        assert curated_stats(tmp_path) == {}


class TestStableId:
    def test_short_kept_long_digested(self) -> None:
        """Ids keep their parts when short; long ones are cut and end in a digest, so two long ids still differ."""
        assert stable_id("evalproxy", "inv 1", "sums/x") == "evalproxy-inv_1-sums_x"
        a, b = stable_id("x" * 80, "a"), stable_id("x" * 80, "b")
        assert len(a) == len(b) == 64 and a != b


class TestJoin:
    def test_by_question_then_by_a_unique_answer(self) -> None:
        """A sample finds its request by its question; without one, by an answer that only one request gave."""
        asked = [Exchange(prompt=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Q: What is 1 + 4?"}], answer="5", latency_ms=1.0),
                 Exchange(prompt=[{"role": "user", "content": "Q: What is 2 + 5?"}], answer="8", latency_ms=2.0),
                 Exchange(answer="8", latency_ms=3.0),
                 Exchange(answer="42", latency_ms=4.0)]
        rows = [SampleRow("t", "a", input="What is 2 + 5?", answer="8"),
                SampleRow("t", "b", answer="42"),
                SampleRow("t", "c", answer="8"),  # two requests answered 8: no match
                SampleRow("t", "d", input="What is 9 + 9?")]
        _join(rows, asked)
        assert [r.exchange.latency_ms if r.exchange else None for r in rows] == [2.0, 4.0, None, None]
        assert rows[0].prompt_text == "What is 2 + 5?" and rows[1].prompt_text == ""

    def test_a_question_inside_a_template_joins_as_a_brute_force_scan_would(self) -> None:
        """Questions of one to many words, inside few-shot templates (glued to the text around them), with
        punctuation and line breaks, some asked twice and some never: each sample gets the request a scan of every
        request's text for its question gives (the one request holding it, else none)."""
        rng = random.Random(5)
        vocab = [f"w{i}" for i in range(300)] + ["the", "of", "a", "x?", "(1)", "\u00e9t\u00e9"]
        questions = [" ".join(rng.choice(vocab) for _ in range(rng.choice([1, 2, 3, 8, 40]))) for _ in range(600)]
        asked = [Exchange(prompt=[{"role": "user", "content": f"Examples...\nQuestion:{q}\nAnswer:"}], latency_ms=i)
                 for i, q in enumerate(questions[:540])]
        asked += [Exchange(prompt=f"again: {q}.", latency_ms=-1) for q in questions[:20]]  # asked twice
        rows = [SampleRow("t", str(i), input=f" {q}\n") for i, q in enumerate(questions)]
        _join(rows, asked)
        for row, q in zip(rows, questions, strict=True):
            holding = [x for x in asked if q in x.user_text()]
            assert row.exchange is (holding[0] if len(holding) == 1 else None), q
        assert 300 < sum(r.exchange is not None for r in rows) < 540


class TestFiles:
    def test_only_the_runs_files_and_real_harness_outputs_are_uploaded(self, tmp_path: Path) -> None:
        """A run record naming /etc/passwd or a link as harness files gets neither into what an export uploads (only
        files a harness parser recognises as its output, and no link); the harness's real output is still there."""
        run = tmp_path / "run"
        out = run / "lm"
        out.mkdir(parents=True)
        real = out / "results_2026-01-01T00-00-00.json"
        real.write_bytes(orjson.dumps({"results": {"t": {"acc,none": 1.0}}, "configs": {"t": {}}}))
        outside = tmp_path / "secret.json"
        outside.write_bytes(orjson.dumps({"results": {"t": {"acc,none": 1.0}}, "configs": {"t": {}}}))
        (run / "link_results.json").symlink_to(outside)
        write_results(run, build_record(command="lm_eval", output_dir=run, params={}, harness=HarnessInfo(
            name="lm-eval", files=["/etc/passwd", str(real), "link_results.json"])))
        files = read_run(run).files()
        assert real in files and (run / "results.yaml") in files
        assert Path("/etc/passwd") not in files and run / "link_results.json" not in files
