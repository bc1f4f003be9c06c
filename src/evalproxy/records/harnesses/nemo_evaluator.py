"""nemo-evaluator: ``<output_dir>/results.yml`` is already a run record; its ``results`` section is taken as is.

Per-sample results come from BYOB's ``--save-predictions`` file, ``<output_dir>/<benchmark>/byob_predictions.jsonl``
(one ``{sample_id, prompt, response, target, scores, status}`` object a line); other nemo-evaluator harnesses write
their samples in their own formats, read by their own parsers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records.harnesses.base import (
    HarnessResult,
    RunFacts,
    SampleScore,
    arg_values,
    as_float,
    load_json_lines,
    runs_program,
    sample_text,
)
from evalproxy.records.results import Results, read_results

_NAMES = ("results.yml", "results.yaml")
_PREDICTIONS = "byob_predictions.jsonl"


class NemoEvaluatorParser:
    name = "nemo-evaluator"

    def matches(self, argv: Sequence[str]) -> bool:
        return runs_program(argv, ("nemo-evaluator", "eval-factory", "nemo-evaluator-launcher", "run_eval"))

    def paths_from_args(self, argv: Sequence[str], workdir: Path) -> list[Path]:
        return [workdir / v for v in arg_values(argv, "--output_dir", "--output-dir")]

    def is_output(self, path: Path) -> bool:
        return path.name in _NAMES

    def parse(self, files: list[Path]) -> HarnessResult:
        path = max(files, key=lambda p: p.stat().st_mtime)
        try:
            record = read_results(path)
        except ConfigError as e:
            return HarnessResult(self.name, "error", files=[path], reason=str(e))
        version = None
        extra = record.model_extra or {}
        meta = extra.get("metadata") or extra.get("versioning")
        if isinstance(meta, dict):
            version = meta.get("nemo_evaluator") or meta.get("version")
        empty = record.results.is_empty()
        return HarnessResult(self.name, "empty" if empty else "success", results=record.results, files=[path],
                             samples=_samples(path.parent, record.results),
                             version=str(version) if version else None,
                             reason="results.yml holds no scores" if empty else None,
                             facts=RunFacts(type=(record.config.model_extra or {}).get("type"),
                                            params=dict(record.config.params),
                                            endpoint_type=record.target.api_endpoint.type))


def _samples(out_dir: Path, results: Results) -> list[SampleScore]:
    """Per-sample scores from BYOB's predictions files under ``out_dir`` (one level down, or beside results.yml)."""
    out: list[SampleScore] = []
    files = sorted(out_dir.glob(f"*/{_PREDICTIONS}")) + sorted(out_dir.glob(_PREDICTIONS))
    tasks = list(results.tasks)
    for path in files:
        # The benchmark's directory is its normalised name; results.yml names the task as the benchmark does.
        task = tasks[0] if len(tasks) == 1 else path.parent.name
        for row in load_json_lines(path):
            scores = row.get("scores")
            if row.get("status", "scored") != "scored" or not isinstance(scores, dict):
                continue
            response = row.get("response")
            for metric, raw in scores.items():
                value = as_float(raw)
                if value is not None:
                    out.append(SampleScore(task=task, sample_id=str(row.get("sample_id")), metric=str(metric),
                                           value=value, answer=response if isinstance(response, str) else None,
                                           input=sample_text(row.get("prompt")), target=sample_text(row.get("target"))))
    return out
