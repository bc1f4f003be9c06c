"""Readers of run directories (stats merge, report, compare, export, cache explain) on hostile or broken run dirs,
through the real command line: they never import code a file names, refuse YAML alias bombs, and bound deep or
huge values instead of crashing."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.loads import load_yaml
from evalproxy.records import RequestLedger, build_record, write_results
from evalproxy.storage.base import _PAIR_FIELDS, SavedPair
from evalproxy.storage.disk import CacheStore

pytestmark = [pytest.mark.timeout(30), pytest.mark.slow]

PLUGIN = """\
from pathlib import Path
Path({marker!r}).write_text("imported")
"""


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m evalproxy ARGS`` in a real process."""
    return subprocess.run([sys.executable, "-m", "evalproxy", *map(str, args)], capture_output=True, text=True,
                          timeout=25, env=env)


def deep(n: int) -> Any:
    value: Any = "bottom"
    for _ in range(n):
        value = [value]
    return value


def bomb(levels: int = 9) -> str:
    """A billion-laughs YAML document: each level a list of nine aliases of the one before."""
    names = "abcdefghijklmnop"[:levels]
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in itertools.pairwise(names)]
    return "\n".join(lines) + "\n"


def save_request(run_dir: Path, body: dict[str, Any], request_id: int = 0) -> None:
    """A saved request in the run's real disk store (written with ``json``, which nests deeper than orjson)."""
    store = CacheStore(run_dir / "cache")
    pair = SavedPair(run_id="r", request_id=request_id, key=f"k{request_id}", occurrence=0,
                     path="/v1/chat/completions", request=body, status=200, stream=False, received_at=1.0)
    try:
        store.requests.set(pair.sort_key, json.dumps({k: getattr(pair, k) for k in _PAIR_FIELDS}).encode())
    finally:
        store.close()


def make_run_dir(run_dir: Path, adapter: dict[str, Any], params: dict[str, Any] | None = None) -> Path:
    """A run dir as ``evalproxy run`` leaves it: results.yaml, adapter_config.yaml, requests.jsonl, a cache."""
    write_results(run_dir, build_record(command="quiz", output_dir=run_dir, params={"temperature": 0.0},
                                        model_id="m", endpoint_type="chat", adapter_config=adapter))
    (run_dir / "adapter_config.yaml").write_text(yaml.safe_dump({"server": {}, "adapter_config": adapter}))
    ledger = RequestLedger(run_dir, interval=0.01)
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0.0, **(params or {})}
    ledger.record(body, status=200, latency_ms=1.0)
    ledger.close()
    save_request(run_dir, {"model": "m", "messages": [{"role": "user", "content": "q"}]})
    return run_dir


class TestNoCodeFromFilesRead:
    @pytest.mark.parametrize("command", ["stats", "report", "compare", "export", "cache"])
    def test_readers_never_import_plugins_a_run_dir_names(self, tmp_path: Path, command: str) -> None:
        """stats merge, report, compare, export and cache explain on a run dir whose config names a plugin dir and a
        plugin module never import them (the modules would write a marker file)."""
        marker = tmp_path / "imported"
        plugins, modules = tmp_path / "plugins", tmp_path / "modules"
        plugins.mkdir()
        modules.mkdir()
        (plugins / "evil_dir_plugin.py").write_text(PLUGIN.format(marker=str(marker)))
        (modules / "evil_module_plugin.py").write_text(PLUGIN.format(marker=str(marker)))
        adapter = {"discovery": {"dirs": [str(plugins)], "modules": ["evil_module_plugin"]},
                   "interceptors": [{"name": "evil_interceptor"}, {"name": "caching"}, {"name": "endpoint"}],
                   "post_eval_hooks": [{"name": "evil_hook"}]}
        run = make_run_dir(tmp_path / "run", adapter)
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "q2"}]}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")])}
        args = {"stats": ("stats", "merge", run, "-o", tmp_path / "merged"), "report": ("report", run),
                "compare": ("compare", run, run), "export": ("export", run, "-o", tmp_path / "export"),
                "cache": ("cache", "explain", run, request)}[command]
        done = cli(*args, env=env)
        assert "Traceback" not in done.stderr, done.stderr
        assert not marker.exists(), f"evalproxy {command} imported a plugin named by the run dir"


class TestYamlAliasBombs:
    def test_anchors_and_merge_keys_still_load(self) -> None:
        """A YAML file with a few anchors, aliases and a merge key loads as safe_load would load it."""
        text = "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\nboth: [*b, *b]\n"
        assert load_yaml(text) == yaml.safe_load(text)

    def test_alias_bomb_is_refused_by_the_loader(self) -> None:
        """The loader refuses a billion-laughs document, naming the file."""
        with pytest.raises(ConfigError, match=r"bomb\.yaml.*aliases"):
            load_yaml(bomb(), source="bomb.yaml")

    def test_export_refuses_an_alias_bomb_results_yaml(self, tmp_path: Path) -> None:
        """evalproxy export on a run dir whose results.yaml is an alias bomb exits with an error naming the file."""
        run = tmp_path / "run"
        run.mkdir()
        (run / "results.yaml").write_text(bomb())
        done = cli("export", run, "-o", tmp_path / "out")
        assert done.returncode == 2 and "aliases" in done.stderr and "results.yaml" in done.stderr
        assert not (tmp_path / "out" / "processed_results.json").exists()

    @pytest.mark.parametrize("command", ["compare", "report", "stats"])
    def test_readers_refuse_an_alias_bomb_adapter_config(self, tmp_path: Path, command: str) -> None:
        """compare, report and stats merge refuse a run dir whose adapter_config.yaml is an alias bomb."""
        run = tmp_path / "run"
        run.mkdir()
        (run / "adapter_config.yaml").write_text(bomb())
        args = {"compare": ("compare", run, run), "report": ("report", run),
                "stats": ("stats", "merge", run, "-o", tmp_path / "merged")}[command]
        done = cli(*args)
        refused = 3 if command == "compare" else 2  # compare's 2 means "not comparable": its usage/I/O errors are 3
        assert done.returncode == refused and "aliases" in done.stderr and "adapter_config.yaml" in done.stderr
        assert "Traceback" not in done.stderr


class TestDeepAndHugeValues:
    def test_compare_bounds_deep_and_huge_params(self, tmp_path: Path) -> None:
        """compare on runs whose config and observed params are deep or 12,000 values long says "too large to
        compare" instead of recursing or crawling."""
        adapter = {"interceptors": [{"name": "payload_modifier", "config": {"params_to_add": {"x": deep(90)}}}],
                   "huge": list(range(12_000))}
        a = make_run_dir(tmp_path / "a", adapter, {"stop": list(range(12_000)), "seed": deep(30)})
        b = make_run_dir(tmp_path / "b", adapter, {"stop": list(range(12_001))})
        with open(a / "requests.jsonl", "a") as f:  # a line orjson could never write: 300 deep
            f.write(json.dumps({"prompt_key": "p", "input_key": "i", "params": {"stop": deep(300)}}) + "\n")
        done = cli("compare", a, b)
        assert "Traceback" not in done.stderr, done.stderr
        assert "too large to compare" in done.stdout
        assert done.returncode == 2 and "not comparable" in done.stdout.lower()

    def test_cache_explain_refuses_a_deep_request(self, tmp_path: Path) -> None:
        """cache explain with a request nested 5000 deep says so and exits 2, without a traceback."""
        run = make_run_dir(tmp_path / "run", {})
        request = tmp_path / "request.json"
        request.write_text('{"model": "m", "messages": ' + "[" * 5000 + "]" * 5000 + "}")
        done = cli("cache", "explain", run, request)
        assert done.returncode == 2 and "nested" in done.stderr and "Traceback" not in done.stderr

    def test_cache_explain_skips_deep_stored_requests(self, tmp_path: Path) -> None:
        """cache explain skips (with a warning) a stored request nested 300 deep and explains the others."""
        run = make_run_dir(tmp_path / "run", {})
        save_request(run, {"model": "m", "messages": [{"role": "user", "content": deep(300)}]}, request_id=1)
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "q2"}]}))
        done = cli("cache", "explain", run, request)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr and "deeper than" in done.stderr
        assert "user text changed" in done.stdout

    @pytest.mark.parametrize("command", ["compare", "export", "report"])
    def test_300_deep_json_in_any_file_read_is_no_traceback(self, tmp_path: Path, command: str) -> None:
        """JSON nested 300 deep in the ledger, the samples and the statistics is skipped or refused, never a
        traceback."""
        run = make_run_dir(tmp_path / "run", {"interceptors": [{"name": "caching"}, {"name": "endpoint"}]})
        line = json.dumps({"prompt_key": "p", "input_key": "i", "params": {"stop": deep(300)}})
        with open(run / "requests.jsonl", "a") as f:
            f.write(line + "\n")
        (run / "samples.jsonl").write_text(json.dumps({"task": deep(300)}) + "\n")
        (run / "eval_factory_metrics.json").write_text(json.dumps({"response_stats": deep(300)}))
        args = {"compare": ("compare", run, run), "export": ("export", run, "-o", tmp_path / "out"),
                "report": ("report", run)}[command]
        done = cli(*args)
        assert "Traceback" not in done.stderr, done.stderr


class TestBadStoreRecords:
    @pytest.mark.parametrize("record", [b'{"run_id": "0"}', b"[1, 2]"])
    def test_cache_explain_on_a_record_that_is_no_pair(self, tmp_path: Path, record: bytes) -> None:
        """cache explain on a store holding a record that is not a saved pair skips it with a warning, without a
        traceback."""
        run = make_run_dir(tmp_path / "run", {})
        store = CacheStore(run / "cache")
        try:
            store.requests.set("0/0000000001", record)
        finally:
            store.close()
        request = tmp_path / "request.json"
        request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "q2"}]}))
        done = cli("cache", "explain", run, request)
        assert "Traceback" not in done.stderr
        assert "unreadable; skipped" in done.stderr or "cannot be read" in done.stderr
