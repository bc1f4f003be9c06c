"""inspect-ai: eval logs under ``--log-dir`` (default ``./logs``), as ``.json`` or ``.eval`` (a zip).

The ``.eval`` zip is read with the standard library: ``header.json`` holds everything but the samples, which are
``samples/<id>_epoch_<n>.json``. inspect-ai itself is not needed to read either form; recent inspect-ai compresses
the members with zstd (zip method 93), which the standard library cannot read: those are read with ``zstandard``,
one of evalproxy's own dependencies (the store compresses answers with it).
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from evalproxy.adapter.core import loads
from evalproxy.records.harnesses.base import (
    HarnessResult,
    RunFacts,
    SampleScore,
    Status,
    add_score,
    arg_values,
    as_float,
    load_json,
    runs_program,
    sample_text,
)
from evalproxy.records.results import Results, ScoreStats

# inspect-ai's letter grades, valued as its own value_to_float does by default.
_GRADES = {"C": 1.0, "I": 0.0, "P": 0.5, "N": 0.0}
_SPREAD = ("stderr", "std", "stddev")
_ZSTD = 93


def _read_member(z: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes, refused (``ValueError``) when its size, as the archive says and as it expands, passes
    :data:`~evalproxy.adapter.core.loads.MAX_FILE_BYTES` (a zip bomb is never expanded)."""
    info = z.getinfo(name)
    if info.file_size > loads.MAX_FILE_BYTES:
        raise loads.too_large(info.file_size, loads.MAX_FILE_BYTES, f"{z.filename}:{name}")
    if info.compress_type != _ZSTD:
        return z.read(name)
    try:
        import zstandard  # a dependency of evalproxy's; an install that lost it still reads the other logs
    except ImportError as e:
        raise ValueError("this .eval log is zstd-compressed and the zstandard package is missing "
                         "(pip install zstandard)") from e
    fp = z.fp
    if fp is None:
        raise ValueError("zip file is closed")
    fp.seek(info.header_offset)
    header = fp.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {name}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    fp.seek(info.header_offset + 30 + name_len + extra_len)
    raw = fp.read(info.compress_size)
    data: bytes = zstandard.ZstdDecompressor().decompress(raw, max_output_size=info.file_size)
    return data


class InspectParser:
    name = "inspect-ai"

    def matches(self, argv: Sequence[str]) -> bool:
        return runs_program(argv, ("inspect", "inspect_ai"))

    def paths_from_args(self, argv: Sequence[str], workdir: Path) -> list[Path]:
        given = arg_values(argv, "--log-dir", "--log_dir")
        return [workdir / v for v in given] or [workdir / "logs"]

    def is_output(self, path: Path) -> bool:
        if path.suffix == ".eval":
            return zipfile.is_zipfile(path)
        if path.suffix != ".json" or path.name in ("logs.json", "listing.json"):
            return False
        try:
            with open(path, "rb") as f:
                head = f.read(2048)
        except OSError:
            return False
        return b'"eval"' in head and b'"status"' in head and b'"version"' in head

    def parse(self, files: list[Path]) -> HarnessResult:
        results = Results()
        samples: list[SampleScore] = []
        statuses: list[str] = []
        errors: list[str] = []
        version: str | None = None
        by_task: dict[str, tuple[str, Path, dict[str, Any]]] = {}
        for path in files:
            try:
                header = _header(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                errors.append(f"{path.name}: unreadable ({e})")
                continue
            ev = header.get("eval") or {}
            task = str(ev.get("task") or path.stem)
            created = str(ev.get("created") or "")
            # Several logs of one task (a retry): the newest is this run's answer.
            if task not in by_task or created >= by_task[task][0]:
                by_task[task] = (created, path, header)
        used: list[Path] = []
        for task, (_, path, header) in sorted(by_task.items()):
            used.append(path)
            version = version or (header.get("eval") or {}).get("packages", {}).get("inspect_ai")
            status = str(header.get("status") or "unknown")
            statuses.append(status)
            if status != "success":
                err = header.get("error") or {}
                msg = str(err.get("message") if isinstance(err, dict) else err or status).splitlines()[0]
                errors.append(f"{task}: {status}: {msg}")
            _scores(results, task, header.get("results") or {})
            samples.extend(_samples(task, path, header))
        if not used:
            return HarnessResult(self.name, "error", files=files, reason="; ".join(errors) or "no readable logs")
        state: Status
        if errors:
            state = "error"
        elif results.is_empty():
            state = "empty"
        else:
            state = "success"
        reason = "; ".join(errors) or ("the logs hold no scores" if state == "empty" else None)
        return HarnessResult(self.name, state, results=results, samples=samples, files=used, version=version,
                             reason=reason, facts=run_facts([h for _, _, h in by_task.values()]))


def _header(path: Path) -> dict[str, Any]:
    if path.suffix == ".eval":
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            name = "header.json" if "header.json" in names else "_journal/start.json"
            d = loads.load_json(_read_member(z, name), source=f"{path}:{name}")
            if name != "header.json":
                d.setdefault("status", "started")
            return d if isinstance(d, dict) else {}
    d = load_json(path)
    if not isinstance(d, dict):
        raise ValueError("not an object")
    return d


def _scores(results: Results, task: str, block: dict[str, Any]) -> None:
    count = block.get("completed_samples") or block.get("total_samples")
    for scorer in block.get("scores") or []:
        metric = str(scorer.get("name") or scorer.get("scorer"))
        values = {str(k): as_float((v or {}).get("value")) for k, v in (scorer.get("metrics") or {}).items()}
        spread = {k: values[k] for k in _SPREAD if values.get(k) is not None}
        scored = scorer.get("scored_samples") or count
        for name, value in values.items():
            if value is None or (name in _SPREAD and len(values) > len(spread)):
                continue
            stats = ScoreStats(count=scored, stderr=spread.get("stderr"),
                               stddev=spread.get("std", spread.get("stddev")))
            add_score(results.tasks, task, metric, name, value, stats)


def _value(v: Any) -> float | None:
    if isinstance(v, str):
        return _GRADES.get(v)
    return as_float(v)


def _iter_samples(path: Path, header: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if path.suffix == ".eval":
        with zipfile.ZipFile(path) as z:
            for name in sorted(z.namelist()):
                if name.startswith("samples/") and name.endswith(".json"):
                    d = loads.load_json(_read_member(z, name), source=f"{path}:{name}")
                    if isinstance(d, dict):
                        yield d
        return
    yield from header.get("samples") or []


def _samples(task: str, path: Path, header: dict[str, Any]) -> list[SampleScore]:
    out: list[SampleScore] = []
    for s in _iter_samples(path, header):
        epoch = int(s.get("epoch") or 1)
        sid = str(s.get("id")) if epoch == 1 else f"{s.get('id')}#{epoch}"
        output = s.get("output") or {}
        answer = output.get("completion") if isinstance(output, dict) else None
        question, target = sample_text(s.get("input")), sample_text(s.get("target"))
        for scorer, score in (s.get("scores") or {}).items():
            value = _value((score or {}).get("value"))
            if value is not None:
                out.append(SampleScore(task=task, sample_id=sid, metric=str(scorer), value=value,
                                       answer=answer if isinstance(answer, str) else None,
                                       input=question, target=target))
    return out


# inspect-ai's generate config and eval config names -> NeMo Evaluator's params.
_GENERATE = {"temperature": "temperature", "top_p": "top_p", "max_tokens": "max_new_tokens",
             "max_connections": "parallelism", "timeout": "request_timeout", "max_retries": "max_retries"}


def run_facts(headers: Sequence[dict[str, Any]]) -> RunFacts:
    """The task type and NeMo-named params the logs record (the first log's value where tasks differ)."""
    params: dict[str, Any] = {}
    tasks: list[str] = []
    for header in headers:
        ev = header.get("eval") or {}
        tasks.append(str(ev.get("task")))
        generate = ev.get("model_generate_config") or {}
        for name, nemo in _GENERATE.items():
            if generate.get(name) is not None:
                params.setdefault(nemo, generate[name])
        limit = (ev.get("config") or {}).get("limit")
        if isinstance(limit, int):
            params.setdefault("limit_samples", limit)
    names = sorted(set(tasks))
    if names:
        params["task"] = ",".join(names)
    return RunFacts(type=",".join(names) or None, params=params)
