"""simple-evals (OpenAI's and NVIDIA's package): ``<out_dir>/<eval_name>.json`` with ``score``, ``score:std``, ...

It writes no per-sample scores in machine-readable form (only an HTML report), so no paired test is possible.
Scores go to both ``tasks`` and ``groups`` under metric ``score``, score ``micro``, as NeMo Evaluator records them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evalproxy.records.harnesses.base import (
    HarnessResult,
    Status,
    add_score,
    arg_values,
    as_float,
    load_json,
    runs_program,
)
from evalproxy.records.results import Results, ScoreStats

_SKIP = frozenset({"task_name", "n_repeats"})


class SimpleEvalsParser:
    name = "simple_evals"

    def matches(self, argv: Sequence[str]) -> bool:
        return runs_program(argv, ("simple_evals", "simple-evals"))

    def paths_from_args(self, argv: Sequence[str], workdir: Path) -> list[Path]:
        given = [workdir / v for v in arg_values(argv, "--out_dir", "--out-dir")]
        dirs = given or [Path("/tmp")]  # simple-evals' own default
        names = arg_values(argv, "--eval_name", "--eval-name", "--eval")
        if names:
            return [d / f"{n}.json" for d in dirs for n in names[0].split(",")]
        # Without an eval name, only the top level of the default /tmp is looked at, never the whole tree.
        return given or sorted(Path("/tmp").glob("*.json"))

    def is_output(self, path: Path) -> bool:
        if path.suffix != ".json":
            return False
        try:
            d = load_json(path) if path.stat().st_size < 1_000_000 else None
        except (OSError, ValueError):
            return False
        return isinstance(d, dict) and as_float(d.get("score")) is not None and "results" not in d

    def parse(self, files: list[Path]) -> HarnessResult:
        results = Results()
        used = []
        for path in files:
            try:
                d = load_json(path)
            except (OSError, ValueError):
                continue
            if not isinstance(d, dict):
                continue
            used.append(path)
            task = str(d.get("task_name") or path.stem.removesuffix("_DEBUG"))
            for key, raw in d.items():
                value = as_float(raw)
                if key in _SKIP or ":" in key or value is None:
                    continue
                stats = ScoreStats(stddev=as_float(d.get(f"{key}:std")), stderr=as_float(d.get(f"{key}:stderr")))
                has_stats = stats.stddev is not None or stats.stderr is not None
                for section in (results.tasks, results.groups):
                    add_score(section, task, key, "micro", value, stats if has_stats else None)
        status: Status = "success" if not results.is_empty() else ("empty" if used else "error")
        return HarnessResult(self.name, status, results=results, files=used,
                             reason=None if status == "success" else "no scores in the result files")
