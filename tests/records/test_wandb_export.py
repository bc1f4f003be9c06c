"""W&B export with the real ``wandb`` package in offline mode: the offline run files read back."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.records.harnesses import read_harness_output, write_samples
from evalproxy.records.results import build_record, write_results

from .conftest import copy_fixture

wandb = pytest.importorskip("wandb", reason="W&B export needs the evalproxy[wandb] extra")
from wandb.proto import wandb_internal_pb2  # noqa: E402  (after the skip check)

from evalproxy.records.wandb_export import WandbSettings, export_to_wandb  # noqa: E402

STATS = {"response_stats": {"count": 20, "successful_count": 20, "avg_latency_ms": 12.5, "first_request_time": 1.7e9,
                            "runs": {"20260101T000000Z-abcdef": {"count": 20}}},
         "caching": {"hits": 5, "misses": 15, "hit_ratio": 0.25}}


def _records(path: Path) -> Iterator[Any]:
    """The records of an offline run's ``.wandb`` file (W&B's framing of LevelDB's log: a 7-byte header, then
    32 KiB blocks of chunks with a 7-byte header each), parsed with wandb's own protobuf types."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:  # zero padding to the block's end
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _read_offline(root: Path, run_id: str) -> list[dict[str, Any]]:
    """Each offline copy of W&B run ``run_id`` under ``root``: its init facts, config, summary, artifacts."""
    out = []
    for f in sorted(root.glob(f"wandb/offline-run-*/run-{run_id}.wandb")):  # a second copy: dir name + "-1"
        run: dict[str, Any] = {"config": {}, "summary": {}, "artifacts": [], "metrics": {}}
        for rec in _records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                r = rec.run
                run.update(id=r.run_id, name=r.display_name, group=r.run_group, job_type=r.job_type,
                           notes=r.notes, tags=list(r.tags), project=r.project, entity=r.entity)
                run["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "config":
                run["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update if u.key})
            elif kind == "summary":
                run["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json)
                                       for u in rec.summary.update})
            elif kind == "metric":
                run["metrics"][rec.metric.name] = rec.metric.summary.last
            elif kind == "artifact":
                a = rec.artifact
                run["artifacts"].append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata),
                                         "files": sorted(c.path for c in a.manifest.contents)})
        out.append(run)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An lm-eval run with two tasks that share a metric name (sums, sums_big) and a group (arith)."""
    root = tmp_path_factory.mktemp("wandb-run")
    copy_fixture("lm_eval_group", root)
    argv = ["lm_eval", "--output_path", "lm_eval_group"]
    h = read_harness_output(argv, workdir=root)
    run = root / "run"
    write_results(run, build_record(command=argv, output_dir=run, params={"temperature": 0.0}, results=h.results,
                                    model_id="org/model", endpoint_type="chat", run_id="inv-1", harness=h.info()))
    write_samples(run, h.samples)
    (run / "eval_factory_metrics.json").write_bytes(orjson.dumps(STATS))
    return run


@pytest.fixture(scope="module")
def wandb_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("wandb")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DIR", str(root))
    mp.setenv("WANDB_SILENT", "true")
    yield root
    mp.undo()


class TestPerTask:
    def test_one_wandb_run_per_task_with_config_summary_and_artifact(self, run_dir: Path, wandb_root: Path) -> None:
        """per_task: a W&B run per task named eval-{invocation}-{task}, its config, scores and artifact files."""
        settings = WandbSettings(entity="team", project="evals", tags=["nightly"], description="first try",
                                 extra_metadata={"phase": "baseline"})
        ids = export_to_wandb([run_dir], settings)
        assert ids == ["evalproxy-inv-1-sums", "evalproxy-inv-1-sums_big", "evalproxy-inv-1-arith"]
        (sums,) = _read_offline(wandb_root, ids[0])
        assert sums["name"] == "eval-inv-1-sums" and sums["group"] == "inv-1" and sums["job_type"] == "evaluation"
        assert sums["notes"] == "first try" and sums["tags"] == ["nightly"] and sums["project"] == "evals"
        cfg = sums["config"]
        assert cfg["invocation_id"] == "inv-1" and cfg["job_id"] == "inv-1.0" and cfg["benchmark"] == "sums"
        assert cfg["harness"] == "lm-evaluation-harness" and cfg["phase"] == "baseline"
        assert cfg["results_dir"] == str(run_dir.resolve()) and "lm_eval" in cfg["launcher_command"]
        assert sums["summary"]["sums/exact_match/exact_match"] == 0.8
        assert "sums_big/exact_match/exact_match" not in sums["summary"]
        assert sums["summary"]["proxy/requests"] == 20 and sums["summary"]["proxy/cache_hit_ratio"] == 0.25
        assert not any("runs" in k or "first_request" in k for k in sums["summary"])  # curated: stable names only
        assert sums["metrics"]["sums/exact_match/exact_match"] is True  # define_metric(summary="last")
        (art,) = sums["artifacts"]
        assert art["type"] == "evaluation_result" and art["name"] == "inv-1-sums"
        assert art["metadata"]["benchmark"] == "sums"
        root = "lm-evaluation-harness.sums"
        assert {f"{root}/artifacts/results.yaml", f"{root}/artifacts/eval_factory_metrics.json",
                f"{root}/artifacts/samples.jsonl", f"{root}/metadata.json"} <= set(art["files"])
        assert any(f.startswith(f"{root}/artifacts/results_2026") for f in art["files"])  # the harness's output
        (group,) = _read_offline(wandb_root, ids[2])
        assert group["config"]["job_id"] == "inv-1.2" and group["summary"]["arith/exact_match/exact_match"] == 0.8


class TestMultiTask:
    def test_one_run_keeps_every_task_and_re_export_updates_it(self, run_dir: Path, wandb_root: Path) -> None:
        """multi_task: one run eval-{invocation} with every task's scores (no overwrite); a re-export resumes it."""
        settings = WandbSettings(project="evals", log_mode="multi_task")
        ids = export_to_wandb([run_dir], settings)
        assert ids == ["evalproxy-inv-1"]
        assert export_to_wandb([run_dir], settings) == ids  # the same W&B run, resumed: no second run
        first, again = _read_offline(wandb_root, ids[0])
        for run in (first, again):
            assert run["id"] == "evalproxy-inv-1" and run["name"] == "eval-inv-1"
            summary = run["summary"]
            assert summary["sums/exact_match/exact_match"] == summary["sums_big/exact_match/exact_match"] == 0.8
            assert summary["arith/exact_match/exact_match"] == 0.8
            assert run["config"]["benchmarks"] == ["sums", "sums_big", "arith"]
        assert first["artifacts"][0]["name"] == "inv-1"
