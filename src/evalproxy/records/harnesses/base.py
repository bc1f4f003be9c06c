"""What a harness parser gives back, and the helpers parsers share."""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import orjson

from evalproxy.adapter.core import loads
from evalproxy.adapter.core.files import atomic_write_bytes
from evalproxy.records.results import HarnessInfo, Metric, Results, Score, ScoreStats, TaskResult

log = logging.getLogger("evalproxy.records")

Status = Literal["success", "error", "empty", "unknown"]

SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class SampleScore:
    """One sample's score for one metric, as the harness graded it (for paired tests between runs).

    ``input`` is the question or prompt as the harness shows it, ``target`` the reference answer and ``answer`` the
    model's answer as graded; each is None when the harness's sample file does not hold it.
    """

    task: str
    sample_id: str
    metric: str
    value: float
    answer: str | None = None
    input: str | None = None
    target: str | None = None


@dataclass
class RunFacts:
    """What a harness's own record says about its run, in NeMo Evaluator's terms: the task ``type``, ``params`` by
    NeMo's names (``max_new_tokens``, ``temperature``, ``parallelism``, ``limit_samples``, ...), and the endpoint
    type, for the run and per task, where the harness says which API it called."""

    type: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    endpoint_type: str | None = None
    task_endpoint_types: dict[str, str] = field(default_factory=dict)


@dataclass
class HarnessResult:
    """Scores read from a harness's own files, or the reason there are none."""

    harness: str | None
    status: Status
    results: Results = field(default_factory=Results)
    samples: list[SampleScore] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    version: str | None = None
    reason: str | None = None
    facts: RunFacts = field(default_factory=RunFacts)

    def info(self) -> HarnessInfo:
        return HarnessInfo(name=self.harness, version=self.version, files=[str(f) for f in self.files],
                           status=self.status, reason=self.reason)


class HarnessParser(Protocol):
    """Reads one harness's output. ``name`` is what goes into ``results.yaml`` and the export's ``harness`` field."""

    name: str

    def matches(self, argv: Sequence[str]) -> bool:
        """True when ``argv`` runs this harness."""
        ...

    def paths_from_args(self, argv: Sequence[str], workdir: Path) -> list[Path]:
        """Files or directories the command names as its output (with the harness's defaults)."""
        ...

    def is_output(self, path: Path) -> bool:
        """True for a file this harness writes its scores to (checked on name and, cheaply, content)."""
        ...

    def parse(self, files: list[Path]) -> HarnessResult:
        """Scores and per-sample results from the output files found."""
        ...


def flatten_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with shell strings (``sh -c "lm_eval ..."``) split into their words."""
    out: list[str] = []
    for a in argv:
        if " " in a:
            try:
                out.extend(shlex.split(a))
            except ValueError:
                out.append(a)
        else:
            out.append(a)
    return out


def runs_program(argv: Sequence[str], names: Iterable[str]) -> bool:
    """True when a word of ``argv`` is one of ``names`` as a program (by basename) or a ``-m`` module."""
    wanted = set(names)
    words = flatten_argv(argv)
    for i, w in enumerate(words):
        if os.path.basename(w) in wanted:
            return True
        if w == "-m" and i + 1 < len(words) and words[i + 1] in wanted:
            return True
    return False


def arg_values(argv: Sequence[str], *flags: str) -> list[str]:
    """Values given to any of ``flags`` (``--flag v`` or ``--flag=v``)."""
    words = flatten_argv(argv)
    out = []
    for i, w in enumerate(words):
        for f in flags:
            if w == f and i + 1 < len(words):
                out.append(words[i + 1])
            elif w.startswith(f + "="):
                out.append(w[len(f) + 1:])
    return out


def as_float(v: Any) -> float | None:
    """A finite number as float; ``None`` for anything else (``"N/A"``, NaN, strings)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def add_score(section: dict[str, TaskResult], task: str, metric: str, score: str, value: float,
              stats: ScoreStats | None = None) -> None:
    tr = section.setdefault(task, TaskResult())
    m = tr.metrics.setdefault(metric, Metric())
    m.scores[score] = Score(value=value, stats=stats)


def sample_text(v: Any) -> str | None:
    """A sample's input or target as text: strings as they are, a chat (list of messages) as its turns, a list of
    reference answers joined by `` | ``, numbers as written; None when there is nothing."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        if v and all(isinstance(m, dict) and "content" in m for m in v):
            return chat_text(v)
        parts = [t for t in (sample_text(x) for x in v) if t is not None]
        return " | ".join(parts) if parts else None
    if isinstance(v, bool | int | float):
        return str(v)
    if isinstance(v, dict):
        return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
    return None


def chat_text(messages: list[dict[str, Any]]) -> str:
    """A chat as text: one message is its content alone; several are ``role: content`` paragraphs."""
    def content(m: dict[str, Any]) -> str:
        c = m.get("content")
        if isinstance(c, list):  # content parts: the text ones
            return "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
        return "" if c is None else str(c)
    if len(messages) == 1:
        return content(messages[0])
    return "\n\n".join(f"{m.get('role', '?')}: {content(m)}" for m in messages)


def load_json(path: Path) -> Any:
    """A harness's JSON file, through the one bounded loader (a ``ValueError`` past its size or nesting depth)."""
    return loads.load_json(loads.read_bounded(path), source=str(path))


def load_json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, read a line at a time; lines that are not objects (torn, or nested
    past the loader's depth) are skipped with a warning."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below; only opening may fail with a warning)
    except OSError as e:
        log.warning("%s not read: %s", path, e)
        return
    with f:
        for n, line in enumerate(_bounded_lines(f, MAX_LINE_BYTES), 1):
            if line is None:
                log.warning("%s line %d skipped: longer than %d MiB", path, n, MAX_LINE_BYTES // 2**20)
                continue
            if not line.strip():
                continue
            try:
                d = loads.load_json(line)
            except ValueError as e:
                log.warning("%s line %d skipped: %s", path, n, e)
                continue
            if isinstance(d, dict):
                yield d


MAX_LINE_BYTES = 64 * 2**20
"""The longest line of a harness's ``.jsonl`` file that is read (one sample's record is kilobytes to megabytes)."""


def _bounded_lines(f: IO[bytes], limit: int) -> Iterator[bytes | None]:
    """The lines of ``f``, each read into memory only up to ``limit`` bytes: a longer one is passed over in pieces
    of that size and given as None."""
    while line := f.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
            pass
        yield None


def write_samples(run_dir: str | os.PathLike[str], samples: Sequence[SampleScore]) -> Path:
    """Write per-sample scores to ``run_dir/samples.jsonl`` (one line each) and return the path."""
    target = Path(run_dir) / SAMPLES_FILE
    atomic_write_bytes(target, b"".join(orjson.dumps(s.__dict__) + b"\n" for s in samples))
    return target


def read_samples(run_dir: str | os.PathLike[str]) -> Iterator[SampleScore]:
    p = Path(run_dir) / SAMPLES_FILE
    if not p.exists():
        return
    with open(p, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = orjson.loads(line)
                # input and target are newer fields: a samples.jsonl written without them reads as None.
                sample = SampleScore(task=d["task"], sample_id=d["sample_id"], metric=d["metric"],
                                     value=float(d["value"]), answer=d.get("answer"), input=d.get("input"),
                                     target=d.get("target"))
                if not all(isinstance(v, str) for v in (sample.task, sample.sample_id, sample.metric)) or not all(
                        v is None or isinstance(v, str) for v in (sample.answer, sample.input, sample.target)):
                    raise TypeError("task, sample_id, metric, answer, input and target must be strings")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("%s line %d skipped: not a sample score (%s: %s)", p, n, type(exc).__name__, exc)
                continue
            yield sample
