"""NeMo Evaluator 0.4's proxy vocabulary, and 0.2.8's last difference, replayed against evalproxy.

Each test states what NeMo does (0.2.8 at tag nemo-evaluator-v0.2.8; 0.4 at the NVIDIA-NeMo/Evaluator main branch,
``src/nemo_evaluator/config/services.py``, ``orchestration/orchestrator.py::_start_proxy``, ``adapters/*``) and checks
that evalproxy does the same, or differs where its docstrings say so. 0.4's own cases (tests/test_adapters/*,
tests/test_completions_guard.py, tests/test_engine/test_model_traffic_capture.py) are rewritten here and in
tests/interceptors/test_{completions_guard,model_traffic,traffic_log}.py against real servers.

Not replayed, and why:
* test_cache_keys.py golden keys (test_golden_key_simple, test_golden_key_with_tools) and
  test_key_ignores_irrelevant_fields: evalproxy keeps its own, stricter key (whole body and path); the difference is
  checked in TestCaching04.test_key_differences instead;
* test_disk_cache.py: 0.4's sqlite ``adapter_cache.db``; evalproxy's store is its own (tests/storage);
* test_proxy.py's ``/s/<id>/`` session path tests: evalproxy forwards paths unchanged and takes the session from the
  ``X-Session-Id`` header;
* test_model_traffic_capture.py's spool and drained-session tests (spools_and_flushes_session, dropped/drained/
  empty session, append_after_consumption) and the inference-stats half of writes_compact_log_and_inference_stats:
  0.4's engine spools one file per session to fold into its trajectories; evalproxy writes one model_traffic.jsonl;
* test_completions_guard.py's build_legacy_run_config tests: 0.4's container environment; the same rule on a
  completions adapter config is TestConfig in tests/interceptors/test_completions_guard.py;
* no 0.4 test exercises ``logging`` itself; its registry name is test_registry_knows_04_names.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.adapter.config import load_config, parse_config
from evalproxy.adapter.config.legacy import convert_legacy
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.registry import Registry, resolve
from evalproxy.simulator import SimulatedModel
from tests.procs import start_serve

NEMO04_FILE = """
services:
  nim:
    type: api
    url: {url}/chat/completions
    protocol: chat_completions
    model: sim-model
    api_key: ${{NEMO04_TEST_KEY}}
    generation: {{temperature: 0.0, max_tokens: 32}}
    proxy:
      interceptors:
        - name: caching
          config: {{cache_dir: {out}/cache}}
      extra_headers: {{X-Team: evals}}
      request_timeout: 30
      model_traffic: {{capture_request_body: true}}
benchmarks:
  - name: gsm8k
    solver: {{type: simple, service: nim}}
output:
  dir: {out}
  report: [markdown, csv]
"""

LAUNCHER_028 = """
defaults:
  - execution: local
  - deployment: none
  - _self_
target:
  api_endpoint:
    model_id: sim-model
    url: {url}/chat/completions
    api_key_name: NEMO04_TEST_KEY
    adapter_config:
      interceptors:
        - name: caching
          config: {{cache_dir: {out}/cache, reuse_cached_responses: true}}
        - endpoint
evaluation:
  tasks:
    - name: gsm8k
"""


def chain(loaded: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(i.name, i.config) for _, i in loaded.adapter.enabled_interceptors()]


class TestHtmlReportSizeNull:
    """0.2.8: ``html_report_size: null`` with caching. NeMo has two answers, by entry point: its conversion
    (``AdapterConfig.from_legacy_config``, the case ``html_report_size_none`` of its
    tests/unit_tests/adapters/test_adapter_config.py) keeps null, so no cap (max_saved_requests: null); its CLI and
    ``evaluate()`` (``core/input.py::validate_configuration``) merge the file's adapter_config onto the framework's
    with ``deep_update(..., skip_nones=True)`` first, so a null is dropped there and the default 5 applies. A file
    read by evalproxy is a file read by NeMo's CLI; evalproxy's conversion is NeMo's conversion; and a config with a
    ``global_adapter_config``, which only get_validated_config reads, keeps its nulls as there. (Each answer was
    checked against nemo-evaluator 0.2.8 itself, installed in .venv-harnesses.)"""

    def test_conversion_keeps_null(self) -> None:
        """The conversion itself, given a null size, caps nothing and hands the hook null, as from_legacy_config."""
        out = convert_legacy({"use_caching": True}, {"html_report_size": None, "caching_dir": "/tmp/cache"})
        caching = next(i for i in out["interceptors"] if i["name"] == "caching")
        assert caching["config"] == {"reuse_cached_responses": True, "save_requests": True, "save_responses": True,
                                     "cache_dir": "/tmp/cache"}
        assert "max_saved_requests" not in caching["config"]  # null: no cap
        assert out["post_eval_hooks"][0]["config"]["html_report_size"] is None

    def test_a_file_null_is_the_default(self, tmp_path: Path) -> None:
        """A file's null is skipped as NeMo's CLI skips it: caps of 5, the hook's size 5."""
        p = tmp_path / "c.yaml"
        p.write_text("use_caching: true\ncaching_dir: /tmp/cache\nhtml_report_size: null\n")
        loaded = load_config(p)
        caching = dict(chain(loaded))["caching"]
        assert caching["max_saved_requests"] == 5 and caching["max_saved_responses"] == 5


    def test_beside_a_global_config_null_is_kept(self, tmp_path: Path) -> None:
        """NeMo reads global_adapter_config only in get_validated_config, which merges as written: a null size
        caps nothing there (max_saved_requests null), and a local null overrides a global value. Fails on main
        91a29fb/5d834dd, which dropped the nulls first (caps of 5)."""
        loaded = parse_config({"global_adapter_config": {"use_caching": True, "html_report_size": None}})
        caching = dict(chain(loaded))["caching"]
        assert "max_saved_requests" not in caching and "max_saved_responses" not in caching
        assert loaded.adapter.post_eval_hooks[0].config["html_report_size"] is None
        loaded = parse_config({"global_adapter_config": {"html_report_size": 10},
                               "target": {"api_endpoint": {"url": "http://x/v1",
                                                           "adapter_config": {"html_report_size": None}}}})
        assert "max_saved_requests" not in dict(chain(loaded))["caching"]


class TestShape:
    """0.4: ``EvalConfig`` (services, benchmarks, output); the proxy of a service is its ``proxy:`` section."""

    def test_proxy_keys_map_onto_chain_and_server(self, tmp_path: Path) -> None:
        """url, model, api_key ${ENV}, protocol, generation, proxy.* and output.* mean there what they mean in
        0.4's _start_proxy: the chain 0.4 builds (caching replaying by session, payload_modifier with generation
        and extra_headers, finish_reason, the guard and traffic capture before endpoint) and 0.4's defaults."""
        text = NEMO04_FILE.format(url="http://127.0.0.1:9/v1", out=tmp_path)
        loaded = parse_config(yaml.safe_load(text), source="n04.yaml")
        assert loaded.shape == "0.4" and loaded.task == "nim" and loaded.snapshot is not None
        assert [n for n, _ in chain(loaded)] == ["payload_modifier", "caching", "finish_reason", "completions_guard",
                                                 "model_traffic", "endpoint"]
        c = dict(chain(loaded))
        assert c["caching"] == {"reuse_cached_responses": True, "session_prefix": True,
                                "cache_dir": f"{tmp_path}/cache"}
        assert c["payload_modifier"] == {"params_to_add": {"temperature": 0.0, "max_tokens": 32},
                                         "headers_to_add": {"X-Team": "evals"}}
        assert c["model_traffic"] == {"capture_request_body": True, "service": "nim"}
        s = loaded.server
        assert (s.upstream_url, s.model_id, s.api_key_name, s.output_dir) == (
            "http://127.0.0.1:9/v1/chat/completions", "sim-model", "NEMO04_TEST_KEY", str(tmp_path))
        assert (s.request_timeout, s.max_retries, s.retry_on_status, s.max_concurrent_requests) == (
            30, 0, [429, 502, 503, 504], 64)
        assert [(h.name, h.config) for _, h in loaded.adapter.enabled_hooks()] == [
            ("post_eval_report", {"report_types": ["markdown", "csv"]})]
        resolve(loaded)

    def test_switches(self) -> None:
        """verbose adds logging first; finish_reason_fixup: false leaves it out; a listed finish_reason moves last;
        a top-level proxy: alone is one service's proxy section; 0.4's default report is markdown."""
        loaded = parse_config({"proxy": {"verbose": True, "finish_reason_fixup": False,
                                         "interceptors": ["finish_reason", "system_message"]}})
        assert [n for n, _ in chain(loaded)] == ["logging", "finish_reason", "system_message", "completions_guard",
                                                 "model_traffic", "endpoint"]
        loaded = parse_config({"proxy": {"interceptors": ["finish_reason", "system_message"]}})
        assert [n for n, _ in chain(loaded)][:2] == ["system_message", "finish_reason"]
        assert loaded.adapter.post_eval_hooks[0].config == {"report_types": ["markdown"]}

    @pytest.mark.parametrize(("data", "field", "words"), [
        ({"services": {"m": {"url": "http://x/v1", "protocol": "chat_completions"}}, "target": {}},
         "target", "0.2.8 key"),
        ({"proxy": {"use_caching": True}}, "proxy.use_caching", "0.2.8 key"),
        ({"proxy": {"extra_bdy": {}}}, "proxy.extra_bdy", "did you mean 'extra_body'"),
        ({"proxy": {"interceptors": [{"name": "caching", "enabled": True}]}}, "proxy.interceptors[0].enabled",
         "0.2.8's"),
        ({"extra_body": {"a": 1}}, "extra_body", "0.4 key"),
        ({"services": {"m": {"url": "http://x/v1", "api_key": "sk-literal"}}}, "services.m.api_key", "env var"),
        ({"services": {"a": {"url": "http://x/v1"}, "b": {"url": "http://y/v1"}}}, "services", "--task"),
        ({"output": {"report": ["pdf"]}}, "output.report", "markdown"),
        ({"proxy": {}, "services": {"m": {"url": "http://x/v1", "proxy": {}}}}, "proxy", "once"),
    ], ids=["028-beside-04", "legacy-in-proxy", "typo", "enabled", "04-in-adapter", "literal-key",
            "two-services", "report-format", "two-proxies"])
    def test_errors_name_the_field_and_version(self, data: dict[str, Any], field: str, words: str) -> None:
        """A key of the other version, a typo, a literal key or an ambiguous service is an error naming the field
        (and the version a key belongs to)."""
        with pytest.raises(ConfigError) as e:
            parse_config(data, source="f.yaml")
        assert e.value.field == field and words in str(e.value)

    def test_service_is_chosen(self) -> None:
        """Of several services, --task names the one served; without it, the only one the solvers use (not the
        judge)."""
        data: dict[str, Any] = {"services": {"a": {"url": "http://x/v1"}, "b": {"url": "http://y/v1", "model": "mb"}}}
        assert parse_config(data, task="b").server.model_id == "mb"
        data["benchmarks"] = [{"name": "t", "solver": {"type": "simple", "service": "b"}}]
        assert parse_config(data).task == "b"


class TestVersionedKeys:
    """A key whose meaning changed is resolved by the file's shape; --strict-config names its version."""

    LAUNCHER = {"target": {"api_endpoint": {"url": "http://x/v1", "adapter_config": {
        "interceptors": [{"name": "caching", "config": {"bypass": True}}, "endpoint"]}}}}

    def test_028_file_ignores_bypass(self) -> None:
        """0.2.8's caching has no bypass (pydantic ignores it): a 0.2.8 launcher file keeps caching on, and says so."""
        loaded = parse_config(self.LAUNCHER)
        assert loaded.shape == "0.2.8"
        resolved = resolve(loaded)
        assert resolved.interceptors[0][1].bypass is False
        assert any("'bypass' is a NeMo Evaluator 0.4 field" in w for w in resolved.warnings)
        assert loaded.adapter.interceptors[0].config == {}  # the effective config shows what runs

    def test_strict_names_the_version(self) -> None:
        """Under --strict-config the same file is refused, naming the version the key belongs to."""
        with pytest.raises(ConfigError) as e:
            resolve(parse_config(self.LAUNCHER, source="l.yaml", strict=True))
        assert "NeMo Evaluator 0.4 field" in str(e.value) and "shaped as 0.2.8" in str(e.value)
        assert e.value.field == "target.api_endpoint.adapter_config.interceptors[0].config.bypass"

    def test_bare_and_04_configs_take_it(self) -> None:
        """A bare adapter config (read alike by both) and a 0.4 file take bypass."""
        for data in ({"interceptors": [{"name": "caching", "config": {"bypass": True}}, "endpoint"]},
                     {"proxy": {"interceptors": [{"name": "caching", "config": {"bypass": True}}]}}):
            resolved = resolve(parse_config(data, strict=True))
            caching = next(p for c, p in resolved.interceptors if c.name == "caching")
            assert caching.bypass is True


def test_registry_knows_04_names() -> None:
    """Every name in 0.4's adapters/registry.py _BUILTIN resolves (test_adapters/test_registry.py's available list);
    an unknown name is an error listing the known ones."""
    names = ["endpoint", "drop_params", "modify_tools", "turn_counter", "raise_client_errors", "system_message",
             "payload_modifier", "consolidate_system", "caching", "log_tokens", "response_stats", "finish_reason",
             "reasoning", "reasoning_replay", "progress_tracking", "logging", "streaming", "http_pairs_dump"]
    reg = Registry.default()
    assert all(reg.interceptor(n).name == n for n in names)
    with pytest.raises(ConfigError, match=r"unknown interceptor 'nonexistent'; known interceptors: .*logging"):
        reg.interceptor("nonexistent")


class TestCaching04:
    """0.4's caching (tests/test_adapters/test_interceptors_extended.py::TestCachingInterceptor, test_cache_keys.py)
    against the real proxy and store."""

    ASK = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "temperature": 0}

    async def test_bypass(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
        """bypass: every request goes upstream and nothing is stored (test_bypass_mode)."""
        proxy = await make_proxy({"interceptors": [{"name": "caching", "config": {
            "bypass": True, "reuse_cached_responses": True}}, "endpoint"]})
        for _ in range(2):
            r = await proxy.post("/v1/chat/completions", json=self.ASK)
            assert r.status == 200 and "X-EvalProxy-Cache" not in r.headers
        assert len(sim.requests_to("/chat/completions")) == 2

    async def test_sessions(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """With session_prefix, one request in two sessions is two misses, and a repeat in one session a hit
        (test_cache_isolated_by_session, test_key_differs_with_session_prefix); without a session header the key is
        evalproxy's own, so a request without one still hits."""
        proxy = await make_proxy({"interceptors": [{"name": "caching", "config": {
            "session_prefix": True, "reuse_cached_responses": True}}, "endpoint"]})
        seen = []
        for session in ("aaa", "bbb", "aaa", None, None):
            headers = {"X-Session-Id": session} if session else {}
            r = await proxy.post("/v1/chat/completions", json=self.ASK, headers=headers)
            seen.append(r.headers["X-EvalProxy-Cache"])
        assert seen == ["miss", "miss", "hit", "miss", "hit"]
        assert len(sim.requests_to("/chat/completions")) == 3

    async def test_key_differences(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Where the keys differ on purpose: 0.4 ignores fields outside its list (stream, stop, n: one key,
        test_key_ignores_irrelevant_fields); evalproxy's key covers the whole body, so each is its own request. Both
        change with temperature (test_key_changes_with_temperature)."""
        proxy = await make_proxy({"interceptors": [{"name": "caching", "config": {
            "reuse_cached_responses": True}}, "endpoint"]})
        for extra in ({}, {"stop": ["\n"]}, {"temperature": 0.0, "seed": 1}, {}):
            r = await proxy.post("/v1/chat/completions", json={**self.ASK, **extra})
            assert r.status == 200
        assert len(sim.requests_to("/chat/completions")) == 3


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_04_and_028_files_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.4-shaped file and a 0.2.8 launcher file for the same model, each served by ``evalproxy serve``: both
    answer; their effective chains (adapter_config.yaml) differ exactly by what 0.4 adds around caching and by 0.4's
    server defaults; only the 0.4 run writes model_traffic.jsonl, full_config.yaml (key unexpanded) and report.md."""
    monkeypatch.setenv("NEMO04_TEST_KEY", "sk-nemo04-secret")
    sim = SimulatedModel()
    server = TestServer(sim.app(), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("/v1"))
    runs = {}
    try:
        for name, text in (("v04", NEMO04_FILE), ("v028", LAUNCHER_028)):
            out = tmp_path / name
            cfg = tmp_path / f"{name}.yaml"
            cfg.write_text(text.format(url=base, out=out))
            proc, url = await start_serve("-c", str(cfg), "--output-dir", str(out))
            try:
                async with aiohttp.ClientSession() as s:
                    for _ in range(2):
                        async with s.post(f"{url}/v1/chat/completions", json={
                                "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}) as r:
                            assert r.status == 200, await r.text()
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.communicate(), 30)
            runs[name] = out
    finally:
        await server.close()
    eff = {n: yaml.safe_load((out / "adapter_config.yaml").read_text()) for n, out in runs.items()}
    chains = {n: [(i["name"], i.get("config") or {}) for i in e["adapter_config"]["interceptors"]]
              for n, e in eff.items()}
    assert [n for n, _ in chains["v028"]] == ["caching", "endpoint"]
    assert [n for n, _ in chains["v04"]] == ["payload_modifier", "caching", "finish_reason", "completions_guard",
                                              "model_traffic", "endpoint"]
    caching04, caching028 = dict(chains["v04"])["caching"], dict(chains["v028"])["caching"]
    assert caching04.pop("cache_dir").endswith("v04/cache") and caching028.pop("cache_dir").endswith("v028/cache")
    assert caching04 == {**caching028, "session_prefix": True}
    server04, server028 = eff["v04"]["server"], eff["v028"]["server"]
    assert (server04["max_retries"], server028["max_retries"]) == (0, 3)
    assert (server04["request_timeout"], server028["request_timeout"]) == (30, 600)
    assert server04["api_key_name"] == server028["api_key_name"] == "NEMO04_TEST_KEY"
    traffic = [orjson.loads(line) for line in (runs["v04"] / "model_traffic.jsonl").read_bytes().splitlines()]
    assert len(traffic) == 1 and traffic[0]["service"] == "nim"  # the repeat was a cache hit
    assert orjson.loads(traffic[0]["request_body"])["max_tokens"] == 32
    snapshot = (runs["v04"] / "full_config.yaml").read_text()
    assert "${NEMO04_TEST_KEY}" in snapshot and "benchmarks" in snapshot
    assert (runs["v04"] / "report.md").exists() and (runs["v04"] / "report.csv").exists()
    assert not (runs["v028"] / "model_traffic.jsonl").exists() and not (runs["v028"] / "full_config.yaml").exists()
    for out in runs.values():
        for p in out.rglob("*"):
            if p.is_file():
                assert b"sk-nemo04-secret" not in p.read_bytes(), p


def test_snapshot_keeps_references_and_hides_secrets(tmp_path: Path) -> None:
    """full_config.yaml keeps ${ENV} references as written and redacts a literal secret (an Authorization in
    extra_headers), as does the effective config's payload_modifier."""
    from evalproxy.adapter.config.nemo04 import snapshot_text
    from evalproxy.adapter.core.redact import redact_obj

    data = {"services": {"m": {"url": "http://x/v1", "api_key": "${MY_KEY}", "proxy": {
        "extra_headers": {"Authorization": "Bearer sk-literal-1"}}}}}
    text = snapshot_text(data, "f.yaml")
    assert "${MY_KEY}" in text and "sk-literal-1" not in text
    loaded = parse_config(data)
    shown = redact_obj(loaded.adapter.model_dump())
    assert "sk-literal-1" not in orjson.dumps(shown).decode()
