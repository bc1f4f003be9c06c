"""post_eval_report on a store holding bad data: each bad record is skipped with a warning, the report is written."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.simulator import SimulatedModel
from evalproxy.storage.base import pair_key
from evalproxy.storage.disk import CacheStore
from tests.hooks.test_post_eval_report import load, real_run


def _deep(n: int) -> Any:
    value: Any = "bottom"
    for _ in range(n):
        value = [value]
    return value


def _write_bad_records(cache_dir: Path) -> None:
    """Bad pairs and failures, sorted before the good ones (run id "0"), straight into the real disk store."""
    store = CacheStore(cache_dir)
    try:
        good = orjson.loads(store.requests.get(sorted(store.requests.iterkeys())[0]))
        bad_pairs = [{**good, "request": "not an object"}, {**good, "request": ["a", "list"]},
                     {**good, "status": "200"}, {**good, "request": {"messages": 5}},
                     {**good, "request": {"messages": [{"role": "user", "content": _deep(300)}]}}]
        for i, rec in enumerate(bad_pairs):
            store.requests.set(pair_key("0", i), json.dumps({**rec, "run_id": "0", "request_id": i}).encode())
        store.requests.set(pair_key("0", 99), b"{not json")
        failure = {"run_id": "0", "request_id": 0, "path": "/v1/chat/completions", "request": "text",
                   "status": "bad", "error": 5, "received_at": "yesterday"}
        store.failures_db.set(pair_key("0", 0), orjson.dumps(failure))
    finally:
        store.close()


@pytest.mark.timeout(60)
async def test_report_skips_bad_saved_pairs_and_failures(make_proxy: Any, sim: SimulatedModel,
                                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """evalproxy report DIR on a disk store with wrong-typed, too deep and unreadable records exits 0, shows the
    good pairs and failures, and warns about each bad one."""
    out = await real_run(make_proxy, sim, monkeypatch, tmp_path)
    before = load(out)
    _write_bad_records(tmp_path / "c")
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "evalproxy", "report", str(out)],
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    damaged = {line.split(": ", 1)[1] for line in done.stderr.splitlines() if "damaged" in line}
    assert len(damaged) == 4  # three pairs and the failure are damaged ...
    assert "nests deeper than" in done.stderr and "not as written" in done.stderr  # ... two pairs are unshowable
    after = load(out)
    assert after["pairs"] and all(p["run_id"] != "0" for p in after["pairs"])
    assert {p["request_id"] for p in after["pairs"]} <= {p["request_id"] for p in before["pairs"]} | {3, 4}
    assert after["failures"] == before["failures"]
    assert (out / "report.html").is_file()
