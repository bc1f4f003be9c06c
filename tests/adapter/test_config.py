"""Config loading: the accepted shapes, legacy conversion, and errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from evalproxy.adapter.config import LoadedConfig, parse_config
from evalproxy.adapter.config import load_config as read_config
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.registry import resolve


def load_config(path: Any = None, **kw: Any) -> LoadedConfig:
    """Read a config and check it against the registry, as the CLI does before it starts a proxy."""
    loaded = read_config(path, **kw)
    resolve(loaded)
    return loaded

PLUGINS = str(Path(__file__).parent / "plugins")

LAUNCHER = """
target:
  api_endpoint:
    url: https://integrate.api.nvidia.com/v1/chat/completions
    model_id: meta/llama-3.1-8b-instruct
    api_key_name: NGC_API_KEY
    type: chat
    adapter_config:
      interceptors:
        - name: system_message
          config:
            system_message: "You are a helpful assistant."
        - name: caching
          config:
            cache_dir: "./cache"
            reuse_cached_responses: true
            save_requests: true
        - name: endpoint
        - name: response_stats
      post_eval_hooks:
        - name: post_eval_report
          config:
            report_types: ["html", "json"]
"""


def write(tmp_path: Path, data: Any, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


class TestShapes:
    def test_launcher_config_loads(self, tmp_path: Path) -> None:
        """A launcher-shaped file gives the chain, the hooks and the upstream settings."""
        loaded = load_config(write(tmp_path, LAUNCHER))
        assert [i.name for i in loaded.adapter.interceptors] == [
            "system_message", "caching", "endpoint", "response_stats"]
        assert loaded.adapter.post_eval_hooks[0].name == "post_eval_report"
        assert loaded.server.upstream_url == "https://integrate.api.nvidia.com/v1/chat/completions"
        assert loaded.server.model_id == "meta/llama-3.1-8b-instruct"
        assert loaded.server.api_key_name == "NGC_API_KEY"
        assert loaded.adapter.endpoint_type == "chat"

    def test_launcher_run_config_output_dir(self, tmp_path: Path) -> None:
        """A launcher file's config.output_dir is the run's output dir (server.output_dir still wins)."""
        data = yaml.safe_load(LAUNCHER)
        data["config"] = {"type": "mmlu", "output_dir": "/results/mmlu"}
        assert load_config(write(tmp_path, data)).server.output_dir == "/results/mmlu"
        data["server"] = {"output_dir": "/elsewhere"}
        assert load_config(write(tmp_path, data)).server.output_dir == "/elsewhere"

    def test_report_size_zero_is_kept(self) -> None:
        """html_report_size: 0 means no pairs in the report, not the default of 5."""
        assert parse_config({"html_report_size": 0}).adapter.post_eval_hooks[0].config["html_report_size"] == 0

    def test_default_chain_saves_what_the_report_shows(self) -> None:
        """With no chain configured, caching saves html_report_size pairs for the report (NeMo's conversion)."""
        loaded = parse_config({"html_report_size": 3})
        assert loaded.adapter.interceptor_config("caching") == {
            "reuse_cached_responses": True, "save_requests": True, "save_responses": True,
            "max_saved_requests": 3, "max_saved_responses": 3}

    def test_bare_adapter_config_and_string_entries(self, tmp_path: Path) -> None:
        """A bare adapter_config loads, and a bare string in interceptors means {name: it}."""
        loaded = load_config(write(tmp_path, {"interceptors": ["caching", "endpoint"]}))
        assert [(i.name, i.enabled, i.config) for i in loaded.adapter.interceptors] == [
            ("caching", True, {}), ("endpoint", True, {})]

    def test_newer_mode_field_and_global_adapter_config(self, tmp_path: Path) -> None:
        """mode: server is accepted, and a launcher's global_adapter_config is merged under the task's own."""
        data = yaml.safe_load(LAUNCHER)
        data["target"]["api_endpoint"]["adapter_config"]["mode"] = "server"
        data["target"]["api_endpoint"]["adapter_config"]["discovery"] = {"dirs": [PLUGINS]}
        data["global_adapter_config"] = {"log_failed_requests": True, "discovery": {"modules": ["json"]},
                                         "endpoint_type": "completions"}
        loaded = load_config(write(tmp_path, data))
        assert loaded.adapter.mode == "server" and loaded.adapter.log_failed_requests is True
        assert loaded.adapter.discovery.modules == ["json"] and loaded.adapter.discovery.dirs == [PLUGINS]
        assert loaded.adapter.endpoint_type == "chat"  # the task's own type wins

    def test_json_file(self, tmp_path: Path) -> None:
        """JSON files load like YAML ones."""
        p = tmp_path / "cfg.json"
        p.write_text('{"interceptors": [{"name": "endpoint"}], "server": {"port": 0}}')
        loaded = load_config(p)
        assert loaded.server.port == 0

    def test_cli_overrides_win(self, tmp_path: Path) -> None:
        """Command-line settings override the file's."""
        loaded = load_config(write(tmp_path, LAUNCHER), overrides={"upstream_url": "http://127.0.0.1:1/v1",
                                                                    "port": 0, "model_id": None})
        assert loaded.server.upstream_url == "http://127.0.0.1:1/v1"
        assert loaded.server.model_id == "meta/llama-3.1-8b-instruct"

    def test_empty_config_gets_the_default_chain(self) -> None:
        """A config listing no interceptors means NeMo Evaluator's default chain (no reasoning) and report hook."""
        loaded = parse_config({})
        assert [i.name for i in loaded.adapter.interceptors] == ["caching", "endpoint", "response_stats"]
        assert loaded.default_chain == "nemo"

    def test_no_config_file_gets_evalproxys_own_default(self) -> None:
        """With no config file at all, evalproxy's own default chain applies: it adds reasoning."""
        loaded = read_config(None)
        assert [i.name for i in loaded.adapter.interceptors] == ["reasoning", "caching", "endpoint", "response_stats"]
        assert loaded.default_chain == "evalproxy"
        assert loaded.adapter.interceptor_config("caching")["reuse_cached_responses"] is True
        assert [h.name for h in loaded.adapter.post_eval_hooks] == ["post_eval_report"]

    def test_disabled_entries_are_kept_but_skipped(self, tmp_path: Path) -> None:
        """enabled: false keeps an entry in the config and out of the chain."""
        loaded = load_config(write(tmp_path, {"interceptors": [
            {"name": "caching", "enabled": False}, "endpoint"]}))
        assert [i.name for _, i in loaded.adapter.enabled_interceptors()] == ["endpoint"]


class TestLegacy:
    def test_flat_keys_become_interceptors(self, tmp_path: Path) -> None:
        """Legacy flat keys convert to the interceptor list NeMo Evaluator would build."""
        loaded = load_config(write(tmp_path, {
            "use_system_prompt": True, "custom_system_prompt": "Be brief.", "use_reasoning": True,
            "end_reasoning_token": "</reason>", "use_caching": True, "caching_dir": "/tmp/c",
        }))
        names = [i.name for i in loaded.adapter.interceptors]
        assert names.index("system_message") < names.index("caching") < names.index("endpoint")
        assert "response_stats" in names and "reasoning" in names
        assert loaded.adapter.interceptor_config("system_message") == {"system_message": "Be brief."}
        assert loaded.adapter.interceptor_config("reasoning")["end_reasoning_token"] == "</reason>"
        assert loaded.adapter.interceptor_config("caching")["cache_dir"] == "/tmp/c"

    def test_legacy_keeps_user_hooks_and_discovery(self, tmp_path: Path) -> None:
        """Converting legacy keys never drops post_eval_hooks or discovery."""
        out = tmp_path / "hook.txt"
        loaded = load_config(write(tmp_path, {
            "use_caching": True,
            "post_eval_hooks": [{"name": "touch_file", "config": {"path": str(out)}}],
            "discovery": {"dirs": [PLUGINS]},
        }))
        assert [h.name for h in loaded.adapter.post_eval_hooks] == ["touch_file"]
        assert loaded.adapter.discovery.dirs == [PLUGINS]

    def test_nemo_order_and_report_driven_saving(self, tmp_path: Path) -> None:
        """The converted chain has NeMo Evaluator's order; the report needs saved pairs, so they are saved."""
        loaded = load_config(write(tmp_path, {
            "use_system_prompt": True, "custom_system_prompt": "x", "params_to_add": {"top_p": 0.9},
            "use_request_logging": True, "use_response_logging": True, "use_reasoning": True,
            "use_progress_tracking": True, "html_report_size": 7,
        }))
        assert [i.name for i in loaded.adapter.interceptors] == [
            "system_message", "payload_modifier", "request_logging", "caching", "endpoint", "response_stats",
            "response_logging", "reasoning", "progress_tracking"]
        caching = loaded.adapter.interceptor_config("caching")
        assert caching is not None
        assert caching["save_requests"] is True and caching["max_saved_requests"] == 7
        assert caching["max_saved_responses"] == 7  # as NeMo emits it; reuse makes caching save every answer
        assert loaded.adapter.post_eval_hooks[0].config == {"report_types": ["html", "json"], "html_report_size": 7}

    def test_unavailable_legacy_feature_is_named(self, tmp_path: Path) -> None:
        """A legacy switch for a NeMo feature evalproxy lacks is refused by name, not silently dropped."""
        with pytest.raises(ConfigError, match="nvcf") as info:
            load_config(write(tmp_path, {"use_nvcf": True}))
        assert info.value.field == "use_nvcf"

    def test_process_reasoning_traces_is_use_reasoning(self, tmp_path: Path) -> None:
        """The newer legacy key process_reasoning_traces (as in NeMo's local_reasoning example) adds reasoning."""
        loaded = load_config(write(tmp_path, {"target": {"api_endpoint": {"adapter_config": {
            "process_reasoning_traces": True, "use_system_prompt": True, "custom_system_prompt": "/think"}}}}))
        names = [i.name for i in loaded.adapter.interceptors]
        assert "reasoning" in names and names[0] == "system_message"

    def test_mixing_legacy_and_interceptors_is_an_error(self, tmp_path: Path) -> None:
        """Legacy flat keys beside an explicit interceptors list are rejected, naming the legacy key."""
        with pytest.raises(ConfigError, match="cannot be mixed") as info:
            load_config(write(tmp_path, {"use_caching": True, "interceptors": ["endpoint"]}))
        assert info.value.field == "use_caching"
        assert info.value.file and info.value.file.endswith("cfg.yaml")


class TestErrors:
    def test_unknown_interceptor_lists_known_ones(self, tmp_path: Path) -> None:
        """An unknown interceptor name is an error naming its position and listing the known names."""
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, {"interceptors": ["endpoint", "cachin"]}))
        assert info.value.field == "interceptors[1].name"
        assert "cachin" in str(info.value) and "caching" in str(info.value) and "cfg.yaml" in str(info.value)

    def test_unknown_param_names_interceptor_and_field(self, tmp_path: Path) -> None:
        """Under strict, an unknown param is an error naming the interceptor, the field path and the closest name."""
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, {"interceptors": [{"name": "caching", "config": {"cache_dri": "x"}},
                                                          "endpoint"]}), strict=True)
        assert info.value.field == "interceptors[0].config.cache_dri"
        assert "caching" in str(info.value) and "'cache_dir'" in str(info.value)

    def test_unknown_param_is_a_warning_by_default(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """Without strict, an unknown param loads with a warning naming interceptor, field and closest name."""
        loaded = read_config(write(tmp_path, {"interceptors": [{"name": "caching", "config": {"cache_dri": "x"}},
                                                               "endpoint"]}))
        resolved = resolve(loaded)
        assert resolved.warnings == [
            "interceptors[0].config.cache_dri: caching: unknown field 'cache_dri'; did you mean 'cache_dir'?"]
        assert "did you mean 'cache_dir'" in caplog.text

    def test_ill_typed_param_in_launcher_config(self, tmp_path: Path) -> None:
        """A wrongly typed param inside a launcher config is named with its full path."""
        bad = LAUNCHER.replace("reuse_cached_responses: true", "reuse_cached_responses: [1]")
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, bad))
        assert info.value.field == "target.api_endpoint.adapter_config.interceptors[1].config.reuse_cached_responses"

    def test_endpoint_twice(self, tmp_path: Path) -> None:
        """endpoint listed twice is an error on the interceptors field."""
        with pytest.raises(ConfigError, match="more than once") as info:
            load_config(write(tmp_path, {"interceptors": ["endpoint", "endpoint"]}))
        assert info.value.field == "interceptors"

    def test_request_changer_after_endpoint(self, tmp_path: Path) -> None:
        """system_message after endpoint is an error naming both."""
        with pytest.raises(ConfigError, match=r"'system_message'.*'endpoint'"):
            load_config(write(tmp_path, {"interceptors": [
                "endpoint", {"name": "system_message", "config": {"system_message": "x"}}]}))

    @pytest.mark.parametrize(
        ("data", "field"),
        [
            ({"server": {"port": "eighty"}}, "server.port"),
            ({"server": {"upstream_url": "ftp://x"}}, "server.upstream_url"),
            ({"html_report_size": -1}, "html_report_size"),
            ({"interceptors": [{"name": "endpoint", "enabled": "maybe"}]}, "interceptors[0].enabled"),
            ({"interceptors": [{"nme": "endpoint"}]}, "interceptors[0].name"),
            ({"target": {"api_endpoint": "x"}}, "target.api_endpoint"),
            ({"use_caching": "yes"}, "use_caching"),
        ],
    )
    def test_wrong_types_name_the_field(self, tmp_path: Path, data: dict[str, Any], field: str) -> None:
        """Every wrongly typed setting is reported with its field path and the file."""
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, data))
        assert info.value.field == field
        assert "cfg.yaml" in str(info.value)

    def test_invalid_yaml_names_the_file(self, tmp_path: Path) -> None:
        """A file that is not YAML is an error naming the file."""
        with pytest.raises(ConfigError, match="not valid YAML") as info:
            load_config(write(tmp_path, "interceptors: [unclosed"))
        assert info.value.file and info.value.file.endswith("cfg.yaml")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config file that does not exist is a clear error."""
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(tmp_path / "nope.yaml")

    def test_unknown_top_level_field(self, tmp_path: Path) -> None:
        """A misspelt top-level field is an error, not silently ignored."""
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, {"interceptor": ["endpoint"]}))
        assert info.value.field == "interceptor" and "did you mean 'interceptors'" in str(info.value)


class TestDiscovery:
    def test_dirs_register_user_interceptors_and_hooks(self, tmp_path: Path) -> None:
        """A user interceptor and hook found through discovery.dirs validate like built-ins."""
        loaded = load_config(write(tmp_path, {
            "discovery": {"dirs": [PLUGINS]},
            "interceptors": [{"name": "add_header_field", "config": {"value": 7}}, "endpoint"],
            "post_eval_hooks": [{"name": "touch_file", "config": {"path": str(tmp_path / "x")}}],
        }))
        assert loaded.adapter.interceptors[0].config == {"value": 7}

    def test_user_param_errors_name_the_field(self, tmp_path: Path) -> None:
        """A user interceptor's Params are validated with the same field paths."""
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, {
                "discovery": {"dirs": [PLUGINS]},
                "interceptors": [{"name": "add_header_field", "config": {"value": "seven"}}, "endpoint"],
            }))
        assert info.value.field == "interceptors[0].config.value"

    def test_missing_module_is_named(self, tmp_path: Path) -> None:
        """A discovery module that cannot be imported names discovery.modules."""
        with pytest.raises(ConfigError, match="no_such_module_xyz") as info:
            load_config(write(tmp_path, {"discovery": {"modules": ["no_such_module_xyz"]},
                                         "interceptors": ["endpoint"]}))
        assert info.value.field == "discovery.modules"


def test_discovery_dirs_import_only_registering_files(tmp_path: Path) -> None:
    """A script in a discovery dir that registers nothing is never run."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "user_plugins.py").write_text((Path(PLUGINS) / "user_plugins.py").read_text())
    (plugins / "helper_script.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    load_config(write(tmp_path, {"discovery": {"dirs": [str(plugins)]},
                                 "interceptors": ["add_header_field", "endpoint"]}))
    assert not (tmp_path / "ran").exists()
