"""NeMo Evaluator 0.2.8's documented configs replayed against evalproxy: each test states NeMo's behaviour (from its
source at tag nemo-evaluator-v0.2.8 and its docs' YAML) and checks that evalproxy does the same, or differs only where
the README's compatibility table says so and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import ValidationError

from evalproxy.adapter.config import LoadedConfig, load_config, parse_config
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.registry import resolve
from evalproxy.interceptors.payload_modifier import PayloadModifierInterceptor
from evalproxy.interceptors.raise_client_errors import RaiseClientErrorsInterceptor
from evalproxy.interceptors.reasoning import ReasoningInterceptor
from evalproxy.interceptors.system_message import SystemMessageInterceptor
from evalproxy.simulator import Fault, SimulatedModel

REFERENCE = Path("/work/shared/reference/001_a3fd6d57be74061d.txt")

# The launcher config cited in NeMo's "Evaluation Output" page (the reference in ../shared/reference/), verbatim.
LAUNCHER_DOC = """
defaults:
  - execution: local
  - deployment: none
  - _self_

execution:
  output_dir: llama_3_1_8b_instruct_results

target:
  api_endpoint:
    model_id: meta/llama-3.1-8b-instruct
    url: https://integrate.api.nvidia.com/v1/chat/completions
    api_key_name: NGC_API_KEY # API Key with access to build.nvidia.com

evaluation:
  nemo_evaluator_config:  # global config settings that apply to all tasks
    config:
      params:
        request_timeout: 3600  # timeout for API requests in seconds
        parallelism: 1  # number of parallel requests
        limit_samples: 10  # limit number of samples for quick testing
      target:
        api_endpoint:
          adapter_config:
            use_reasoning: false  # if true, strips reasoning tokens and collects reasoning stats
            use_system_prompt: true  # enables custom system prompt
            custom_system_prompt: >-
              "Think step by step."
  tasks:
    - name: ifeval  # use the default benchmark configuration
    - name: gpqa_diamond
      nemo_evaluator_config:  # task-specific configuration for gpqa_diamond
        config:
          params:
            temperature: 0.6  # sampling temperature
            top_p: 0.95  # nucleus sampling parameter
            max_new_tokens: 8192  # maximum tokens to generate
      env_vars:
        HF_TOKEN: HF_TOKEN_FOR_GPQA_DIAMOND
    - name: mbpp
      nemo_evaluator_config:  # task-specific configuration for mbpp
        config:
          params:
            temperature: 0.2  # sampling temperature
            top_p: 0.95  # nucleus sampling parameter
            max_new_tokens: 2048  # maximum tokens to generate
            extra:
              n_samples: 5  # sample 5 predictions per prompt
          target:
            api_endpoint:
              adapter_config:
                custom_system_prompt: >-
                  "You must only provide the code implementation"
"""


def write(tmp_path: Path, data: Any, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def adapter(yaml_text: str) -> dict[str, Any]:
    """The adapter_config of a docs snippet shaped ``target.api_endpoint.adapter_config``."""
    data = yaml.safe_load(yaml_text)
    return data["target"]["api_endpoint"]["adapter_config"] if "target" in data else data


def chain(loaded: LoadedConfig) -> list[tuple[str, dict[str, Any]]]:
    return [(i.name, i.config) for _, i in loaded.adapter.enabled_interceptors()]


def hooks(loaded: LoadedConfig) -> list[tuple[str, dict[str, Any]]]:
    return [(h.name, h.config) for _, h in loaded.adapter.enabled_hooks()]


NEMO_DEFAULT_CACHING = {"reuse_cached_responses": True, "save_requests": True, "save_responses": True,
                        "max_saved_requests": 5, "max_saved_responses": 5}
NEMO_DEFAULT_CHAIN = [("caching", NEMO_DEFAULT_CACHING), ("endpoint", {}),
                      ("response_stats", {"logging_aggregated_stats_interval": 100})]
NEMO_DEFAULT_HOOKS = [("post_eval_report", {"report_types": ["html", "json"], "html_report_size": 5})]


class TestDefaultChain:
    """NeMo: a config with no interceptors goes through the legacy conversion, whose empty case is the default chain
    caching(reuse, 5/5 saved) → endpoint → response_stats, plus post_eval_report(html, json, 5). Never reasoning."""

    @pytest.mark.parametrize("text", [
        "",
        "log_failed_requests: true\nendpoint_type: chat\nmode: server\n",
        "target:\n  api_endpoint:\n    url: http://m/v1/chat/completions\n",
        "target:\n  api_endpoint:\n    adapter_config: {}\n",
        "interceptors: []\n",
        "use_reasoning: false\n",
        "process_reasoning_traces: false\nuse_caching: true\n",
        "html_report_size: null\n",  # NeMo's CLI skips nulls when merging a file onto its defaults
    ], ids=["empty", "run-wide-keys", "launcher-no-adapter", "empty-adapter", "empty-list", "reasoning-off",
            "traces-off", "null-size"])
    def test_no_interceptors_means_nemo_default(self, tmp_path: Path, text: str) -> None:
        """A NeMo-shaped file listing no interceptors gets NeMo's default chain and report hook, without reasoning."""
        loaded = load_config(write(tmp_path, text))
        assert chain(loaded) == NEMO_DEFAULT_CHAIN
        assert hooks(loaded) == NEMO_DEFAULT_HOOKS
        assert loaded.default_chain == "nemo"
        resolve(loaded)

    def test_run_wide_keys_are_kept(self, tmp_path: Path) -> None:
        """Run-wide keys beside the default chain keep their values, as NeMo copies them."""
        loaded = load_config(write(tmp_path, {"log_failed_requests": True, "endpoint_type": "completions"}))
        assert loaded.adapter.log_failed_requests is True and loaded.adapter.endpoint_type == "completions"

    def test_only_hooks_keeps_the_users_hooks(self, tmp_path: Path) -> None:
        """Y9 (post-evaluation-hooks.md): NeMo drops the user's hook for its default one (size 5); evalproxy gets the
        default chain too but keeps the user's hook as written (different on purpose: DESIGN, hooks never dropped)."""
        loaded = load_config(write(tmp_path, """
target:
  api_endpoint:
    adapter_config:
      post_eval_hooks:
      - name: "post_eval_report"
        enabled: true
        config:
          report_types: ["html", "json"]
          html_report_size: 10
"""))
        assert chain(loaded) == NEMO_DEFAULT_CHAIN
        assert hooks(loaded) == [("post_eval_report", {"report_types": ["html", "json"], "html_report_size": 10})]

    def test_legacy_cases_convert_as_nemo(self) -> None:
        """NeMo's verified conversions: use_caching false, no html report, both, raised caps, caching_dir."""
        assert chain(parse_config({"use_caching": False}))[0] == ("caching", {**NEMO_DEFAULT_CACHING,
                                                                              "reuse_cached_responses": False})
        no_html = parse_config({"generate_html_report": False})
        assert chain(no_html)[0] == ("caching", {"reuse_cached_responses": True, "save_requests": False,
                                                 "save_responses": False})
        assert hooks(no_html) == []
        both = parse_config({"use_caching": False, "generate_html_report": False})
        assert [n for n, _ in chain(both)] == ["endpoint", "response_stats"]
        caps = parse_config({"max_saved_requests": 20, "max_saved_responses": 3})
        assert chain(caps)[0][1]["max_saved_requests"] == 20 and chain(caps)[0][1]["max_saved_responses"] == 5
        c = chain(parse_config({"caching_dir": "/c"}))
        assert c[0][1]["cache_dir"] == "/c" and c[2][1]["cache_dir"] == "/c/response_stats_cache"

    def test_no_file_is_evalproxys_own_default(self) -> None:
        """No config file at all: evalproxy's own default, which adds reasoning and says which default applied."""
        loaded = load_config(None)
        assert [n for n, _ in chain(loaded)] == ["reasoning", "caching", "endpoint", "response_stats"]
        assert loaded.default_chain == "evalproxy"


class TestLauncher:
    """NeMo's launcher merges evaluation.nemo_evaluator_config with each task's (task wins; mappings key by key,
    lists replaced) and reads target.api_endpoint.adapter_config from the result."""

    def test_reference_is_the_cited_config(self) -> None:
        """The test's copy of the launcher config is the one cited in ../shared/reference (when present)."""
        if not REFERENCE.exists():
            pytest.skip("reference file not present")
        cited = REFERENCE.read_text()
        assert "custom_system_prompt: >-" in cited and "n_samples: 5" in cited

    def test_tasks_that_differ_need_a_task(self, tmp_path: Path) -> None:
        """mbpp has its own system prompt, so without a task the file is ambiguous: an error listing the tasks."""
        with pytest.raises(ConfigError, match="ifeval, gpqa_diamond, mbpp"):
            load_config(write(tmp_path, LAUNCHER_DOC))

    @pytest.mark.parametrize(("task", "prompt"), [
        ("ifeval", '"Think step by step."'),
        ("gpqa_diamond", '"Think step by step."'),
        ("mbpp", '"You must only provide the code implementation"'),
    ])
    def test_task_merge(self, tmp_path: Path, task: str, prompt: str) -> None:
        """Each task gets the global legacy keys with its own over them: system_message then NeMo's default chain,
        no reasoning (use_reasoning: false); the upstream comes from the top-level target."""
        loaded = load_config(write(tmp_path, LAUNCHER_DOC), task=task)
        assert chain(loaded) == [("system_message", {"system_message": prompt}), *NEMO_DEFAULT_CHAIN]
        assert hooks(loaded) == NEMO_DEFAULT_HOOKS
        assert loaded.server.upstream_url == "https://integrate.api.nvidia.com/v1/chat/completions"
        assert loaded.server.model_id == "meta/llama-3.1-8b-instruct"
        assert loaded.server.api_key_name == "NGC_API_KEY"
        assert loaded.task == task and loaded.tasks == ["ifeval", "gpqa_diamond", "mbpp"]
        resolve(loaded)

    def test_unknown_task(self, tmp_path: Path) -> None:
        """A task the file does not list is an error naming the ones it does."""
        with pytest.raises(ConfigError, match=r"no task 'mmlu'.*ifeval, gpqa_diamond, mbpp"):
            load_config(write(tmp_path, LAUNCHER_DOC), task="mmlu")

    def test_sibling_target_and_list_replacement(self, tmp_path: Path) -> None:
        """local_advanced_adapters.yaml's placement (target beside config): a task's interceptors list replaces the
        global one whole, a global post_eval_hooks stays, and a task legacy key beside a global list is NeMo's
        mixing error."""
        glob = {"target": {"api_endpoint": {"adapter_config": {
            "interceptors": ["caching", "endpoint"], "post_eval_hooks": ["post_eval_report"]}}}}
        own = {"target": {"api_endpoint": {"adapter_config": {"interceptors": ["endpoint"]}}}}
        data = {"target": {"api_endpoint": {"url": "http://m/v1"}},
                "evaluation": {"nemo_evaluator_config": glob, "tasks": [{"name": "a", "nemo_evaluator_config": own}]}}
        loaded = load_config(write(tmp_path, data))
        assert [n for n, _ in chain(loaded)] == ["endpoint"]
        assert [n for n, _ in hooks(loaded)] == ["post_eval_report"]
        data["evaluation"]["tasks"][0]["nemo_evaluator_config"] = {
            "target": {"api_endpoint": {"adapter_config": {"use_caching": False}}}}
        with pytest.raises(ConfigError, match="cannot be mixed"):
            load_config(write(tmp_path, data))

    def test_overrides_are_refused(self, tmp_path: Path) -> None:
        """The launcher refuses the old 'overrides' key; so does evalproxy, rather than ignore it."""
        data = {"evaluation": {"overrides": {"x": 1}, "tasks": [{"name": "a"}]}}
        with pytest.raises(ConfigError, match="overrides"):
            load_config(write(tmp_path, data))


class TestGlobalAdapterConfig:
    def test_file_with_only_global(self, tmp_path: Path) -> None:
        """A file holding only global_adapter_config uses it (NeMo merges it under the local one)."""
        loaded = load_config(write(tmp_path, {"global_adapter_config": {"interceptors": ["endpoint"],
                                                                        "log_failed_requests": True}}))
        assert [n for n, _ in chain(loaded)] == ["endpoint"] and loaded.adapter.log_failed_requests

    def test_global_list_local_legacy_warns(self, tmp_path: Path) -> None:
        """NeMo silently ignores local legacy keys when the global config lists interceptors; evalproxy warns."""
        loaded = load_config(write(tmp_path, {
            "global_adapter_config": {"interceptors": ["endpoint"]},
            "target": {"api_endpoint": {"adapter_config": {"use_caching": False}}}}))
        assert [n for n, _ in chain(loaded)] == ["endpoint"]
        assert any("use_caching" in w for w in loaded.warnings)


class TestParams:
    """NeMo builds params with pydantic's defaults: unknown keys are ignored. evalproxy accepts NeMo's fields,
    warns about names no NeMo version defines (with the closest known name), and refuses them under strict."""

    def test_nemo_fields_are_accepted(self, tmp_path: Path) -> None:
        """enabled inside config, log_level, and output_dir for request/response logging load without a warning."""
        loaded = load_config(write(tmp_path, {"interceptors": [
            {"name": "request_logging", "config": {"output_dir": "/o", "enabled": True, "log_level": "DEBUG"}},
            "endpoint",
            {"name": "response_logging", "config": {"output_dir": "/o", "max_responses": 3}}]}), strict=True)
        assert resolve(loaded).warnings == []

    def test_unknown_field_warns_with_closest_name(self, tmp_path: Path) -> None:
        """A typo is a warning naming interceptor, field and the closest name; strict makes it an error."""
        cfg = {"interceptors": ["endpoint", {"name": "response_stats", "config": {"cache_dri": "/x"}}]}
        assert resolve(load_config(write(tmp_path, cfg))).warnings == [
            "interceptors[1].config.cache_dri: response_stats: unknown field 'cache_dri'; did you mean 'cache_dir'?"]
        with pytest.raises(ConfigError, match="response_stats: unknown field 'cache_dri'; did you mean 'cache_dir'"):
            resolve(load_config(write(tmp_path, cfg), strict=True))


def docs_adapter(text: str) -> dict[str, Any]:
    """A docs snippet as a bare adapter config, its chain ending in endpoint where NeMo's would run it."""
    return adapter(text)


async def through_request(ic: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The body ``ic`` sends on for ``body``."""
    seen: dict[str, Any] = {}

    async def call_next(ctx: RequestContext) -> ProxyResponse:
        seen["body"] = ctx.json
        seen["headers"] = ctx.headers
        return ProxyResponse.from_json({})

    await ic(RequestContext(method="POST", path="/v1/chat/completions", json=body), call_next)
    return seen


async def through_response(ic: Any, resp: ProxyResponse) -> ProxyResponse:
    async def call_next(ctx: RequestContext) -> ProxyResponse:
        return resp

    out: ProxyResponse = await ic(RequestContext(method="POST", path="/v1/chat/completions", json={}), call_next)
    return out


def answer(content: str, role: str = "assistant") -> ProxyResponse:
    return ProxyResponse.from_json({"choices": [{"index": 0, "message": {"role": role, "content": content},
                                                 "finish_reason": "stop"}]})


def content_of(resp: ProxyResponse) -> Any:
    return resp.json["choices"][0]["message"]["content"]


class TestSystemMessage:
    """Y24/Y25 (system-messages.md): one system message at index 0 holding ours and every existing one's text."""

    @pytest.mark.parametrize(("strategy", "text", "expected"), [
        ("prepend", "You are a helpful AI assistant.", "You are a helpful AI assistant.\nA\nB"),
        ("replace", "You are a precise assistant.", "You are a precise assistant."),
        ("prepend", "Important: ", "Important: \nA\nB"),
        ("append", "Remember to be concise.", "A\nB\nRemember to be concise."),
    ])
    async def test_docs_strategies(self, run: RunContext, strategy: str, text: str, expected: str) -> None:
        """[sys A, user q, sys B] becomes [sys <merged>, user q], as NeMo's verified example."""
        ic = SystemMessageInterceptor(SystemMessageInterceptor.Params(system_message=text, strategy=strategy), run)
        q = {"role": "user", "content": "q"}
        seen = await through_request(ic, {"messages": [{"role": "system", "content": "A"}, q,
                                                       {"role": "system", "content": "B"}]})
        assert seen["body"]["messages"] == [{"role": "system", "content": expected}, q]

    async def test_no_existing_system_message(self, run: RunContext) -> None:
        """With no system message, each strategy gives just the configured text, first."""
        for strategy in ("replace", "prepend", "append"):
            ic = SystemMessageInterceptor(SystemMessageInterceptor.Params(system_message="S", strategy=strategy), run)
            seen = await through_request(ic, {"messages": [{"role": "user", "content": "q"}]})
            assert seen["body"]["messages"][0] == {"role": "system", "content": "S"}


class TestPayloadModifier:
    """Y5-Y8 (payload-modification.md): remove at any depth, then add top-level, then rename top-level."""

    async def test_docs_example(self, run: RunContext) -> None:
        """top_k and reasoning_content go at every depth; temperature/top_p set; old_param renamed."""
        cfg = docs_adapter("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "payload_modifier"
          enabled: true
          config:
            params_to_add:
              temperature: 0.7
              top_p: 0.9
            params_to_remove:
              - "top_k"              # top-level field in the payload to remove
              - "reasoning_content"  # field in the message to remove
            params_to_rename:
              old_param: "new_param"
        - name: "endpoint"
          enabled: true
          config: {}
""")
        loaded = parse_config(cfg)
        ((cls, params),) = resolve(loaded).interceptors  # the chain's layers; endpoint is its terminal
        ic = cls(params, run)
        seen = await through_request(ic, {
            "top_k": 5, "temperature": 0, "old_param": 1,
            "messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}]})
        assert seen["body"] == {"temperature": 0.7, "top_p": 0.9, "new_param": 1,
                                "messages": [{"role": "assistant", "content": "a"}]}

    async def test_extra_body_replaced_whole_and_add_then_rename(self, run: RunContext) -> None:
        """Y7: extra_body is a literal top-level key, replaced whole; an added key is renamed too (add, rename)."""
        ic = PayloadModifierInterceptor(PayloadModifierInterceptor.Params(
            params_to_add={"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}, "max_new_tokens": 9},
            params_to_rename={"max_new_tokens": "max_tokens"}), run)
        seen = await through_request(ic, {"extra_body": {"a": 1}, "max_tokens": 1})
        assert seen["body"] == {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}, "max_tokens": 9}

    def test_legacy_headers_convert(self) -> None:
        """Legacy headers_to_add/remove/rename build payload_modifier as NeMo's conversion does."""
        loaded = parse_config({"headers_to_add": {"X-A": "1"}, "headers_to_remove": ["X-B"],
                               "headers_to_rename": {"X-C": "X-D"}})
        assert chain(loaded)[0] == ("payload_modifier", {"headers_to_add": {"X-A": "1"}, "headers_to_remove": ["X-B"],
                                                         "headers_to_rename": {"X-C": "X-D"}})

    async def test_framing_headers_are_not_added(self, run: RunContext) -> None:
        """As NeMo: headers_to_add drops host/content-length/connection/transfer-encoding (with a warning)."""
        ic = PayloadModifierInterceptor(PayloadModifierInterceptor.Params(
            headers_to_add={"Host": "evil", "X-Team": "a"}), run)
        seen = await through_request(ic, {})
        assert "Host" not in seen["headers"] and seen["headers"]["X-Team"] == "a"


class TestReasoning:
    """reasoning.md and IC/reasoning_interceptor.py: assistant content only; start null + not-finished false."""

    async def test_strips_through_the_end_token(self, run: RunContext) -> None:
        """Y17: everything through </think> is taken out of the assistant's content."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(), run)
        assert content_of(await through_response(ic, answer("<think>hm</think>\n42"))) == "42"

    async def test_other_roles_untouched(self, run: RunContext) -> None:
        """Only assistant messages are processed, as in NeMo."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(), run)
        assert content_of(await through_response(ic, answer("x</think>y", role="tool"))) == "x</think>y"

    async def test_null_start_and_not_finished_false_blanks_as_nemo(self, run: RunContext) -> None:
        """start null declares every answer opens inside the block: with include_if_not_finished false, an answer
        without the end token is an unfinished block and becomes "" (as NeMo)."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(start_reasoning_token=None,
                                                              include_if_not_finished=False), run)
        assert content_of(await through_response(ic, answer("still thinking"))) == ""
        assert content_of(await through_response(ic, answer("done</think>42"))) == "42"

    async def test_plain_answer_never_blanked_with_a_start_token(self, run: RunContext) -> None:
        """NeMo blanks a plain answer when include_if_not_finished is false whatever the start token; evalproxy
        keeps an answer that never opened a block (different on purpose: DESIGN §5)."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(include_if_not_finished=False), run)
        assert content_of(await through_response(ic, answer("plain answer"))) == "plain answer"
        assert content_of(await through_response(ic, answer("<think>unfinished"))) == ""

    def test_legacy_null_start_gives_the_default_token(self) -> None:
        """NeMo's conversion omits a null legacy start token, so the interceptor default <think> applies."""
        cfg = chain(parse_config({"use_reasoning": True, "start_reasoning_token": None}))
        assert "start_reasoning_token" not in dict(cfg)["reasoning"]


class TestRaiseClientErrors:
    """raise-client-error.md (Y11, Y13-Y16): which upstream statuses stop the evaluation."""

    @pytest.mark.parametrize(("cfg", "raised", "passed"), [
        ({}, [400, 401, 404, 499], [408, 429, 200, 500]),
        ({"status_codes": [401, 403]}, [401, 403, 404], [408, 429]),  # Y14: the range still applies, as in NeMo
        ({"exclude_status_codes": [408, 429, 404]}, [400, 403], [404, 408]),
        ({"exclude_status_codes": []}, [408, 429], [500]),
    ])
    def test_rule(self, cfg: dict[str, Any], raised: list[int], passed: list[int]) -> None:
        p = RaiseClientErrorsInterceptor.Params(**cfg)
        assert all(p.raises(s) for s in raised) and not any(p.raises(s) for s in passed)

    def test_invalid_params(self) -> None:
        """Overlap of status_codes and excludes, or start >= end, are refused at start as in NeMo."""
        with pytest.raises(ValidationError):
            RaiseClientErrorsInterceptor.Params(status_codes=[429])
        with pytest.raises(ValidationError):
            RaiseClientErrorsInterceptor.Params(status_code_range_start=500, status_code_range_end=400)

    async def test_through_the_proxy(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
        """Y11: an upstream 404 becomes a 500 error naming the status, and the marker file is written; a 429 passes."""
        proxy = await make_proxy(docs_adapter("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "endpoint"
          enabled: true
          config: {}
        - name: "raise_client_errors"
          enabled: true
          config:
            exclude_status_codes: [408, 429]
            status_code_range_start: 400
            status_code_range_end: 499
"""), max_retries=0, retry_on_status=[])
        sim.script(Fault(status=404))
        r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status == 500 and "status code 404" in (await r.json())["error"]["message"]
        assert "404" in (tmp_path / "out" / ".nemo_evaluator_server_error").read_text()
        sim.script(Fault(status=429))
        r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "y"}]})
        assert r.status == 429

    def test_legacy_switch(self) -> None:
        """use_raise_client_errors adds raise_client_errors with its defaults, last, as NeMo's conversion."""
        assert chain(parse_config({"use_raise_client_errors": True}))[-1] == ("raise_client_errors", {})


class TestNemoPlugins:
    """A plugin written for NeMo Evaluator 0.2.8 (nemo_evaluator.adapters.decorators/types) loads through discovery
    without NeMo installed, and runs as it would there."""

    @pytest.fixture(autouse=True)
    def _nemo_names(self) -> None:
        from evalproxy.nemo_compat import install

        install()  # what evalproxy serve and run do before discovery

    async def test_plugin_runs_unchanged(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Its request interceptor changes the body (from_values), its response interceptor rewrites _content."""
        proxy = await make_proxy({"discovery": {"dirs": [str(Path(__file__).parent / "nemo_plugins")]},
                                  "interceptors": ["nemo_add_field", "endpoint", "nemo_shout"]}, model_id="sim-m")
        r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 200
        assert sim.log[-1].body["nemo_field"] == "sim-m"
        content = (await r.json())["choices"][0]["message"]["content"]
        assert content == content.upper()
        r = await proxy.post("/v1/chat/completions", json={"messages": [], "stop_now": True})
        assert r.status == 500 and "asked to stop" in (await r.json())["error"]["message"]

    def test_decorator_checks_as_nemo(self) -> None:
        """A class with no plugin base class, or no Params, is refused as NeMo's decorator refuses it."""
        from evalproxy.nemo_compat import RequestInterceptor, register_for_adapter

        with pytest.raises(ValueError, match="must subclass"):
            register_for_adapter("x", "")(type("X", (), {}))

        class NoParams(RequestInterceptor):
            def intercept_request(self, req: Any, context: Any) -> Any:
                return req

        with pytest.raises(TypeError, match="Params"):
            register_for_adapter("y", "")(NoParams)


class TestFiles:
    async def test_run_post_hook_answers_as_nemo(self, make_proxy: Any) -> None:
        """POST /adapterserver/run-post-hook answers 200 {status: success, message} as NeMo, a second call too."""
        proxy = await make_proxy({"interceptors": ["endpoint"]})
        for _ in range(2):
            resp = await proxy.post("/adapterserver/run-post-hook")
            body = await resp.json()
            assert resp.status == 200
            assert (body["status"], body["message"]) == ("success", "Post-eval hooks executed successfully")

    async def test_effective_config_keeps_reasoning_tokens(self, make_proxy: Any, tmp_path: Path) -> None:
        """adapter_config.yaml shows start/end_reasoning_token as written, not as redacted secrets."""
        proxy = await make_proxy({"interceptors": [
            {"name": "reasoning", "config": {"start_reasoning_token": "<t>", "end_reasoning_token": "</t>"}},
            "endpoint"]})
        await proxy.post("/adapterserver/run-post-hook")
        text = (tmp_path / "out" / "adapter_config.yaml").read_text()
        assert "</t>" in text and "<t>" in text


# The docs' YAML at nemo-evaluator-v0.2.8 (docs/deployment/adapters/*.md and
# docs/libraries/nemo-evaluator/interceptors/*.md), verbatim, with the chain evalproxy builds.
# NeMo's own result is in each comment.
DOCS_CHAINS = {
    # Y1 configuration.md:423-449. NeMo: invalid stage order (request_logging after reasoning); no endpoint.
    "Y1-configuration": ("""
target:
  api_endpoint:
    url: http://localhost:8080/v1/chat/completions
    type: chat
    model_id: megatron_model
    adapter_config:
      interceptors:
        - name: system_message
          config:
            system_message: "You are a helpful assistant."
            strategy: "prepend"  # Optional: replace, append, or prepend (default)
        - name: reasoning
          config:
            start_reasoning_token: "<think>"
            end_reasoning_token: "</think>"
        - name: request_logging
          config:
            max_requests: 50
        - name: response_logging
          config:
            max_responses: 50
        - name: caching
          config:
            cache_dir: ./cache
            reuse_cached_responses: true
""", ["system_message", "reasoning", "request_logging", "response_logging", "caching"]),
    # Y2 usage.md:85-116. NeMo: invalid stage order (system_message after reasoning).
    "Y2-usage": ("""
target:
  api_endpoint:
    url: http://localhost:8080/v1/completions/
    type: completions
    model_id: megatron_model
    adapter_config:
      interceptors:
        - name: reasoning
          config:
            start_reasoning_token: "<think>"
            end_reasoning_token: "</think>"
        - name: system_message
          config:
            system_message: "You are a helpful assistant that thinks step by step."
        - name: request_logging
          config:
            max_requests: 50
        - name: response_logging
          config:
            max_responses: 50
        - name: caching
          config:
            cache_dir: ./cache
        - name: progress_tracking

config:
  type: mmlu_pro
  output_dir: ./results
  params:
    limit_samples: 10
""", ["reasoning", "system_message", "request_logging", "response_logging", "caching", "progress_tracking"]),
    # Y3 caching.md:19-36. NeMo: valid [caching, endpoint], no hooks.
    "Y3-caching": ("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "caching"
          enabled: true
          config:
            cache_dir: "./evaluation_cache"
            reuse_cached_responses: true
            save_requests: true
            save_responses: true
            max_saved_requests: 1000
            max_saved_responses: 1000
        - name: "endpoint"
          enabled: true
          config: {}
""", ["caching", "endpoint"]),
    # Y10 progress-tracking.md:16-31. NeMo: valid.
    "Y10-progress": ("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "endpoint"
          enabled: true
          config: {}
        - name: "progress_tracking"
          enabled: true
          config:
            progress_tracking_url: "http://monitoring:3828/progress"
            progress_tracking_interval: 10
            request_method: "PATCH"
            output_dir: "/tmp/output"
""", ["endpoint", "progress_tracking"]),
    # Y12 raise-client-error.md:46-59. NeMo: invalid stage order (endpoint after a response interceptor).
    "Y12-raise-first": ("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "raise_client_errors"
          enabled: true
          config:
            # Custom configuration - only specific status codes
            status_codes: [400, 401, 403, 404]
        - name: "endpoint"
          enabled: true
          config: {}
""", ["raise_client_errors", "endpoint"]),
    # Y18 reasoning.md:101-115. NeMo: invalid stage order.
    "Y18-reasoning-first": ("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: reasoning
          config:
            start_reasoning_token: "[REASONING]"
            end_reasoning_token: "[/REASONING]"
            add_reasoning: true
            enable_reasoning_tracking: true
        - name: "endpoint"
          enabled: true
          config: {}
""", ["reasoning", "endpoint"]),
    # Y20 response-logging.md:20-32. NeMo: valid.
    "Y20-response-logging": ("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "endpoint"
          enabled: true
          config: {}
        - name: "response_logging"
          enabled: true
          config:
            max_responses: 1000
""", ["endpoint", "response_logging"]),
    # Y21 response-stats.md:30-48. NeMo: invalid stage order (endpoint after response_stats).
    "Y21-stats-first": ("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "response_stats"
          enabled: true
          config:
            # Default configuration - collect all statistics
            collect_token_stats: true
            collect_finish_reasons: true
            collect_tool_calls: true
            save_individuals: true
            cache_dir: "/tmp/response_stats_interceptor"
            logging_aggregated_stats_interval: 100
        - name: "endpoint"
          enabled: true
          config: {}
""", ["response_stats", "endpoint"]),
    # Y23 response-stats.md:69-89. NeMo: valid.
    "Y23-stats": ("""
target:
  api_endpoint:
    adapter_config:
      interceptors:
        - name: "endpoint"
          enabled: true
          config: {}
        - name: "response_stats"
          enabled: true
          config:
            # Custom configuration with periodic saving
            collect_token_stats: true
            collect_finish_reasons: true
            collect_tool_calls: true
            stats_file_saving_interval: 100
            save_individuals: true
            cache_dir: "/custom/stats/cache"
            logging_aggregated_stats_interval: 25

""", ["endpoint", "response_stats"]),
}


class TestDocsExamples:
    @pytest.mark.parametrize("case", sorted(DOCS_CHAINS))
    def test_docs_config_loads(self, case: str) -> None:
        """Each documented config loads with its interceptors in order, strictly (no unknown params), and no hooks
        (NeMo adds none when interceptors are listed). Where NeMo refuses the order, evalproxy's folded chain gives it
        a defined meaning instead (README: stage order)."""
        text, names = DOCS_CHAINS[case]
        loaded = parse_config(yaml.safe_load(text), strict=True)
        assert [n for n, _ in chain(loaded)] == names
        assert hooks(loaded) == []
        resolve(loaded)

    def test_completions_type_from_the_launcher(self) -> None:
        """Y2: the endpoint's type reaches endpoint_type; config.output_dir is the run's output dir."""
        loaded = parse_config(yaml.safe_load(DOCS_CHAINS["Y2-usage"][0]))
        assert loaded.adapter.endpoint_type == "completions" and loaded.server.output_dir == "./results"

    @pytest.mark.parametrize("fragment", [
        "config:\n  params_to_add:\n    temperature: 0.7\n    top_p: 0.9\n  params_to_remove:\n"
        "    - \"frequency_penalty\"\n    - \"presence_penalty\"\n",
        "config:\n  status_codes: [401, 403]\n",
    ], ids=["Y6", "Y14"])
    def test_fragment_as_a_whole_config_is_refused(self, fragment: str) -> None:
        """A docs fragment (an interceptor's config block) given as a whole adapter config is an error, as in NeMo."""
        with pytest.raises(ConfigError, match="config"):
            parse_config(yaml.safe_load(fragment))

    def test_y19_invalid_yaml(self, tmp_path: Path) -> None:
        """Y19 (request-logging.md) is not valid YAML (over-indented 'enabled'): an error naming the file."""
        text = ('target:\n  api_endpoint:\n    adapter_config:\n      interceptors:\n'
                '        - name: "request_logging"\n            enabled: true\n            config:\n'
                '              max_requests: 1000\n        - name: "endpoint"\n          enabled: true\n'
                '          config: {}\n')
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(write(tmp_path, text))


class TestChainsNemoRefuses:
    async def test_all_disabled_is_a_pass_through(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """NeMo refuses to start with nothing enabled; evalproxy forwards requests unchanged."""
        proxy = await make_proxy({"interceptors": [{"name": "caching", "enabled": False},
                                                   {"name": "endpoint", "enabled": False}]})
        r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status == 200 and sim.log[-1].body == {"messages": [{"role": "user", "content": "x"}]}

    async def test_docs_chain_without_endpoint_serves(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Y1 (no endpoint, an order NeMo refuses) serves requests: the system prompt reaches the model."""
        cfg = docs_adapter(DOCS_CHAINS["Y1-configuration"][0])
        cfg["interceptors"] = [i for i in cfg["interceptors"] if i["name"] != "caching"]  # its ./cache: not here
        proxy = await make_proxy(cfg)
        r = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status == 200
        assert sim.log[-1].body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}


class TestCachingDefault:
    async def test_only_cache_dir_does_not_reuse(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
        """NeMo's caching defaults to reuse_cached_responses: false, so an entry with only cache_dir pays again after
        a restart (the default chains set reuse to true themselves)."""
        cfg = {"interceptors": [{"name": "caching", "config": {"cache_dir": str(tmp_path / "c")}}, "endpoint"]}
        body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0}
        for _ in range(2):
            proxy = await make_proxy(cfg)
            assert (await proxy.post("/v1/chat/completions", json=body)).status == 200
            await proxy.close()
        assert len(sim.log) == 2


class TestMetricsFile:
    async def test_response_stats_has_nemos_keys(self, make_proxy: Any, tmp_path: Path) -> None:
        """eval_factory_metrics.json's response_stats has NeMo's keys and types: an integer run_id and
        inference_run_times keyed by run number as a string, with ISO times."""
        proxy = await make_proxy({"interceptors": ["endpoint", "response_stats"]})
        await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        await proxy.close()
        stats = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())["response_stats"]
        assert stats["run_id"] == 0 and isinstance(stats["last_request_time"], float)
        for key in ("count", "successful_count", "status_codes", "finish_reason", "stop_reason", "avg_latency_ms",
                    "max_latency_ms", "avg_prompt_tokens", "avg_total_tokens", "avg_completion_tokens",
                    "tool_calls_count", "function_calls_count", "inference_time", "description"):
            assert key in stats, key
        run = stats["inference_run_times"]["0"]
        assert run["run_start"] <= run["first_request_time"] <= run["last_request_time"]
