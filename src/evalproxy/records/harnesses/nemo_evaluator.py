"""nemo-evaluator: ``<output_dir>/results.yml`` is already a run record; its ``results`` section is taken as is."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records.harnesses.base import HarnessResult, RunFacts, arg_values, runs_program
from evalproxy.records.results import read_results

_NAMES = ("results.yml", "results.yaml")


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
                             version=str(version) if version else None,
                             reason="results.yml holds no scores" if empty else None,
                             facts=RunFacts(type=(record.config.model_extra or {}).get("type"),
                                            params=dict(record.config.params),
                                            endpoint_type=record.target.api_endpoint.type))
