"""Scores from the harnesses' own output files.

``read_harness_output(argv, workdir=..., started_at=..., explicit=...)`` picks the parser from the command, then looks
for its files (1) where the command's own arguments say (``--output_path``, ``--log-dir``, ``--out_dir``,
``--output_dir``, with the harness's defaults), else (2) among files created in ``workdir`` since ``started_at``,
else (3) at ``explicit`` (``--results PATH``). For a command evalproxy does not recognise, ``explicit`` is read by
the parser that recognises its files; without it, a results file in NeMo Evaluator's format (``results.yml``, with
``tasks``/``groups``: what the jobs service's harnesses and any NeMo-compatible script write) created in ``workdir``
during the run is read (evalproxy's own run records are not such files); else the result has ``status="unknown"``
and a reason.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.loads import read_yaml
from evalproxy.records.harnesses.base import (
    HarnessParser,
    HarnessResult,
    SampleScore,
    read_samples,
    write_samples,
)
from evalproxy.records.harnesses.inspect_logs import InspectParser
from evalproxy.records.harnesses.lm_eval import LmEvalParser
from evalproxy.records.harnesses.nemo_evaluator import NemoEvaluatorParser
from evalproxy.records.harnesses.simple_evals import SimpleEvalsParser

PARSERS: tuple[HarnessParser, ...] = (LmEvalParser(), InspectParser(), SimpleEvalsParser(), NemoEvaluatorParser())

# Directories a working-dir scan never enters: environments and VCS data are large and never hold results.
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache",
                        "cache", ".cache"})
_SCAN_LIMIT = 20_000

__all__ = [
    "PARSERS",
    "HarnessParser",
    "HarnessResult",
    "SampleScore",
    "detect_harness",
    "read_harness_output",
    "read_samples",
    "write_samples",
]


def detect_harness(argv: Sequence[str]) -> HarnessParser | None:
    """The parser for the harness ``argv`` runs, or None."""
    return next((p for p in PARSERS if p.matches(argv)), None)


def _walk(root: Path) -> Iterator[Path]:
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            seen += 1
            if seen > _SCAN_LIMIT:
                return
            yield Path(dirpath) / name


def _outputs(parser: HarnessParser, roots: Sequence[Path], since: float | None) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        candidates = [root] if root.is_file() else list(_walk(root)) if root.is_dir() else []
        for p in candidates:
            try:
                fresh = since is None or p.stat().st_mtime >= since
            except OSError:
                continue
            if fresh and parser.is_output(p):
                found.append(p)
    return sorted(set(found))


_NEMO = NemoEvaluatorParser()


def _nemo_shaped_results(workdir: Path, since: float | None) -> list[Path]:
    """NeMo-format results files created in ``workdir`` since ``since`` (never without a start time: an old file is
    not this run's), evalproxy's own run records left out."""
    if since is None:
        return []
    out = []
    for path in _outputs(_NEMO, [workdir], since):
        try:
            doc = read_yaml(path)
        except (OSError, ConfigError):
            continue
        results = doc.get("results") if isinstance(doc, dict) else None
        results = results if isinstance(results, dict) else {}
        if isinstance(doc, dict) and "evalproxy" not in doc and any(isinstance(doc.get(k), dict) or
                                                                    isinstance(results.get(k), dict)
                                                                    for k in ("tasks", "groups")):
            out.append(path)
    return out


def read_harness_output(
    argv: Sequence[str],
    *,
    workdir: str | os.PathLike[str] = ".",
    started_at: float | None = None,
    explicit: str | os.PathLike[str] | None = None,
) -> HarnessResult:
    """Scores for a finished harness command (see the module docstring for the search order).

    ``started_at`` is a ``time.time()`` taken before the command started: files older than it are ignored, so a
    stale result from an earlier run is never reported as this run's.
    """
    wd = Path(workdir)
    parser = detect_harness(argv)
    explicit_path = Path(explicit) if explicit is not None else None
    if explicit_path is not None and not explicit_path.is_absolute():
        explicit_path = wd / explicit_path
    if parser is None:
        if explicit_path is not None:
            for candidate in PARSERS:
                files = _outputs(candidate, [explicit_path], None)
                if files:
                    return candidate.parse(files)
        prog = os.path.basename(argv[0]) if argv else ""
        nemo_shaped = _nemo_shaped_results(wd, started_at)
        if nemo_shaped:
            found = _NEMO.parse(nemo_shaped)
            return dataclasses.replace(found, harness=prog or None, version=None)
        return HarnessResult(None, "unknown",
                             reason=f"unknown harness '{prog}': no scores recorded (evalproxy reads lm-eval, "
                                    "inspect-ai, simple-evals and nemo-evaluator output; pass --results PATH to "
                                    "point at a file of one of those formats)")
    searches: list[tuple[str, list[Path], float | None]] = [
        ("the command's output arguments", parser.paths_from_args(argv, wd), started_at),
        (f"files created in {wd} during the run", [wd], started_at),
    ]
    if explicit_path is not None:
        searches.append((f"--results {explicit_path}", [explicit_path], None))
    for _, roots, since in searches:
        files = _outputs(parser, roots, since)
        if files:
            return parser.parse(files)
    where = "; ".join(f"{label}" for label, _, _ in searches)
    return HarnessResult(parser.name, "empty", reason=f"{parser.name} wrote no result files (looked in: {where})")
