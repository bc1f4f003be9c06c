"""Files that readers may look at while they are written: atomic replacement, JSON as the output dir writes it."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")
log = logging.getLogger("evalproxy.files")


def _umask() -> int:
    """The process's umask, read once: from /proc where there is one (``os.umask`` can only be read by setting it,
    and it is process-wide: flipping it while threads create files would give them the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # at import, before any thread of ours exists
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""The mode of every file evalproxy writes: what the user's umask makes of 0666, as for any program's output (what
could be secret is never written at all)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one; the file gets
    :data:`FILE_MODE` (``mkstemp`` alone would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run_files_dir(cache_dir: str | None, output_dir: Path, default: str) -> Path:
    """Where a unit keeps its per-run statistics files: ``cache_dir`` as configured (relative: under the output
    dir), else ``<output_dir>/<default>``."""
    if cache_dir and Path(cache_dir).is_absolute():
        return Path(cache_dir)
    return output_dir / (cache_dir or default)


def load_run_files(dirs: Iterable[Path], load: Callable[[Any], T], skip: str | None = None) -> list[T]:
    """``load`` of every readable ``run-*.json`` in ``dirs`` (in name order, so runs in start order), except
    ``run-<skip>.json``; an unreadable file is logged and left out."""
    out = []
    for d in dirs:
        for path in sorted(d.glob("run-*.json")) if d.is_dir() else ():
            if skip is not None and path.stem == f"run-{skip}":
                continue
            try:
                out.append(load(orjson.loads(path.read_bytes())))
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring unreadable statistics file %s: %s", path, exc)
    return out


def dump_json(obj: Any) -> bytes:
    """Indented JSON, as every file of the output dir is written."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
