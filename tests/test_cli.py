"""The command line as a user runs it: real processes, real signals, real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.cli import is_loopback
from evalproxy.simulator import SimulatedModel
from tests.procs import start_serve
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`


PLUGINS = str(Path(__file__).parent / "adapter" / "plugins")
MSGS = [{"role": "user", "content": "hello"}]


def config(tmp_path: Path, marker: Path, **extra: Any) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "interceptors": ["endpoint"],
        "discovery": {"dirs": [PLUGINS]},
        "post_eval_hooks": [{"name": "touch_file", "config": {"path": str(marker)}}],
        **extra,
    }))
    return cfg


class TestServe:
    async def test_launcher_config_serves(self, tmp_path: Path) -> None:
        """The launcher-shaped config of the docs serves requests through its chain and writes its report."""
        from tests.adapter.test_config import LAUNCHER

        sim = SimulatedModel()
        upstream = TestServer(sim.app(), host="127.0.0.1")
        await upstream.start_server()
        cfg = tmp_path / "launcher.yaml"
        cfg.write_text(LAUNCHER.replace('"./cache"', repr(str(tmp_path / "cache"))))
        proc, url = await start_serve("-c", str(cfg), "--upstream", str(upstream.make_url("/v1")),
                                      "-o", str(tmp_path / "out"))
        async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/chat/completions",
                                                        json={"model": "m", "messages": MSGS}) as r:
            assert r.status == 200
            await r.read()
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        await upstream.close()
        assert sim.log[0].body is not None
        assert sim.log[0].body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
        assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "cache" / "responses").is_dir()

    @pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
    async def test_loop_flag_picks_the_event_loop(self, tmp_path: Path, loop: str) -> None:
        """serve --loop asyncio runs on asyncio's own loop (uvloop is the default where installed), and answers."""
        if loop == "uvloop":
            pytest.importorskip("uvloop")
        sim = SimulatedModel()
        upstream = TestServer(sim.app(), host="127.0.0.1")
        await upstream.start_server()
        flag = ["--loop", "asyncio"] if loop == "asyncio" else []
        proc, url = await start_serve(*flag, "--upstream", str(upstream.make_url("/v1")), "-o", str(tmp_path / "out"),
                                      "--log-level", "DEBUG")
        async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/chat/completions",
                                                        json={"model": "m", "messages": MSGS}) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        _, err = await proc.communicate()
        await upstream.close()
        assert proc.returncode == 0 and f"event loop: {loop}" in err.decode()

    async def test_sigterm_finishes_in_flight_runs_hooks_once_exits_0(self, tmp_path: Path) -> None:
        """SIGTERM during a run: in-flight requests complete, hooks run once, exit status 0."""
        sim = SimulatedModel(latency=1.0)
        upstream = TestServer(sim.app(), host="127.0.0.1")
        await upstream.start_server()
        marker = tmp_path / "hooks.txt"
        proc, url = await start_serve("-c", str(config(tmp_path, marker)), "--upstream",
                                      str(upstream.make_url("/v1")), "-o", str(tmp_path / "out"))
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> int:
                async with session.post(f"{url}/v1/chat/completions",
                                        json={"model": "m", "messages": [{"role": "user", "content": str(i)}]}) as r:
                    await r.read()
                    return r.status

            tasks = [asyncio.create_task(one(i)) for i in range(5)]
            await wait_until(lambda: len(sim.log) >= 5, what="the upstream to hold all five requests")
            proc.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*tasks)
        assert statuses == [200] * 5
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert marker.read_text().count("\n") == 1
        assert (tmp_path / "out" / "adapter_config.yaml").is_file()
        await upstream.close()

    async def test_config_error_exits_2_naming_the_field(self, tmp_path: Path) -> None:
        """A bad config stops serve before it binds, with the file and field in the message."""
        cfg = tmp_path / "bad.yaml"
        cfg.write_text("interceptors: [endpoint, nosuch]\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evalproxy", "serve", "-c", str(cfg), "--upstream", "http://127.0.0.1:9/v1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == 2
        assert b"bad.yaml" in err and b"interceptors[1].name" in err and b"nosuch" in err

    def test_missing_upstream_is_a_config_error(self, tmp_path: Path) -> None:
        """serve without an upstream URL says which field to set."""
        cfg = tmp_path / "c.yaml"
        cfg.write_text("interceptors: [endpoint]\n")
        done = subprocess.run([sys.executable, "-m", "evalproxy", "serve", "-c", str(cfg)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2
        assert "server.upstream_url" in done.stderr


CLIENT = """
import os, sys, openai
assert sys.argv[1] == os.environ["OPENAI_BASE_URL"], (sys.argv[1], os.environ["OPENAI_BASE_URL"])
client = openai.OpenAI(max_retries=0)
r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0)
print("ANSWER", r.choices[0].message.content)
sys.exit(int(sys.argv[2]))
"""


class TestRun:
    @pytest.mark.parametrize("status", [0, 3])
    async def test_run_passes_exit_status_and_runs_hooks(self, tmp_path: Path, status: int) -> None:
        """evalproxy run -- python client.py: the client reaches the model, its status is ours, hooks ran."""
        sim = SimulatedModel()
        upstream = TestServer(sim.app(), host="127.0.0.1")
        await upstream.start_server()
        marker = tmp_path / "hooks.txt"
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evalproxy", "run", "-c", str(config(tmp_path, marker)),
            "--upstream", str(upstream.make_url("/v1")), "-o", str(tmp_path / "out"),
            "--", sys.executable, str(script), "{proxy_url}", str(status),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == status, err.decode()
        assert b"ANSWER [" in out
        assert len(sim.requests_to("/chat/completions")) == 1
        assert marker.read_text().count("\n") == 1
        await upstream.close()

    def test_run_without_command(self, tmp_path: Path) -> None:
        """run with nothing after -- is a usage error."""
        cfg = tmp_path / "c.yaml"
        cfg.write_text("interceptors: [endpoint]\ngenerate_html_report: false\n")
        done = subprocess.run([sys.executable, "-m", "evalproxy", "run", "-c", str(cfg), "--upstream",
                               "http://127.0.0.1:9/v1", "--"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "give the command after --" in done.stderr


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("0.0.0.0", False), ("10.1.2.3", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    """Only loopback binds count as local (others print a warning at start)."""
    assert is_loopback(host) is loopback


class TestCacheCommand:
    async def test_stats_and_clear(self, make_proxy: Any, tmp_path: Path) -> None:
        """evalproxy cache stats counts stored answers of a run dir; clear empties it."""
        proxy = await make_proxy({"interceptors": ["caching", "endpoint"], "generate_html_report": False})
        for i in range(3):
            await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": str(i)}],
                                                           "temperature": 0})
        await proxy.close()
        run = [sys.executable, "-m", "evalproxy", "cache"]
        stats = await asyncio.to_thread(subprocess.run, [*run, "stats", str(tmp_path / "out")], capture_output=True,
                                        text=True, timeout=60)
        assert stats.returncode == 0 and '"answers": 3' in stats.stdout
        cleared = await asyncio.to_thread(subprocess.run, [*run, "clear", str(tmp_path / "out")],
                                          capture_output=True, text=True, timeout=60)
        assert cleared.returncode == 0 and "cleared 3 entries" in cleared.stdout

    def test_missing_cache_is_an_error(self, tmp_path: Path) -> None:
        """cache stats on a directory without a cache says so and exits 1."""
        done = subprocess.run([sys.executable, "-m", "evalproxy", "cache", "stats", str(tmp_path / "none")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "no cache" in done.stderr


def test_open_files_limit_is_raised() -> None:
    """At start the soft open-files limit is raised to the hard one (where allowed)."""
    import resource

    from evalproxy.cli import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def root_logging() -> Iterator[None]:
    """main() sets up logging on the root logger: put back what pytest had there."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
class TestDispatch:
    def test_job_runs_the_run_command(self, tmp_path: Path) -> None:
        """A job's process runs ``python -m evalproxy run``, which parses to the run command (one run function)."""
        from evalproxy.cli import build_parser
        from evalproxy.cli.serve import cmd_run
        from evalproxy.jobs.launch import prepare

        target = {"api_endpoint": {"url": "http://127.0.0.1:9/v1", "model_id": "m", "type": "chat"}}
        job = {"command": ["echo", "{proxy_url}"], "params": {}}
        argv = prepare(tmp_path / "job", target, job, tmp_path / "caches", sys.executable)
        run = argv[argv.index("--") + 1:]
        assert run[:4] == [sys.executable, "-m", "evalproxy", "run"]
        args = build_parser().parse_args(run[3:])
        assert args.func is cmd_run and args.cmd == ["--", "echo", "{proxy_url}"]

    @pytest.mark.parametrize(("argv", "status"), [(["export", "/nonexistent/run"], 2),
                                                  (["compare", "/nonexistent/a", "/nonexistent/b"], 3)])
    def test_commands_return_their_status(self, argv: list[str], status: int) -> None:
        """main returns the status its command gives: a missing run directory is a usage error (2; compare's is 3,
        since its 2 means "not comparable")."""
        from evalproxy.cli import main

        assert main(argv) == status

    def test_config_error_is_reported_with_status_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A config error raised inside a command is printed as one line and exits 2."""
        from evalproxy.cli import main

        assert main(["run", "-c", str(tmp_path / "absent.yaml"), "--", "true"]) == 2
        assert "evalproxy: config error:" in capsys.readouterr().err


def test_print_config_shows_what_a_nemo_config_means_and_serves_nothing(tmp_path: Path) -> None:
    """``serve --print-config`` on a NeMo config prints the chain in the order requests pass it, every param with its
    default (caching's reuse_cached_responses: false, as in NeMo), the server settings and the hooks, with the key and
    the URL's password redacted, and exits 0 without serving; ``run --print-config`` needs no command."""
    cfg = tmp_path / "nemo.yaml"
    cfg.write_text(yaml.safe_dump({"interceptors": [
        {"name": "system_message", "config": {"system_message": "Be careful."}},
        {"name": "caching", "config": {"cache_dir": str(tmp_path / "c")}}, {"name": "endpoint"},
        {"name": "response_stats"}], "post_eval_hooks": [{"name": "post_eval_report"}]}))
    env = {**os.environ, "PRINT_TEST_KEY": "sk-print-test-99881"}
    for command in ("serve", "run"):
        done = subprocess.run([sys.executable, "-m", "evalproxy", command, "-c", str(cfg), "--print-config",
                               "-u", "http://user:pw-4471@127.0.0.1:9/v1", "--api-key-name", "PRINT_TEST_KEY",
                               "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        doc = yaml.safe_load(done.stdout)
        assert [u["name"] for u in doc["chain"]] == ["system_message", "caching", "response_stats", "endpoint"]
        caching = doc["chain"][1]["params"]
        assert caching["reuse_cached_responses"] is False and caching["cache_dir"] == str(tmp_path / "c")
        assert doc["chain"][0]["params"]["strategy"] == "prepend"
        assert doc["post_eval_hooks"][0]["name"] == "post_eval_report" and doc["server"]["api_key_name"] == \
            "PRINT_TEST_KEY"
        assert "pw-4471" not in done.stdout and "sk-print-test-99881" not in done.stdout
        assert not (tmp_path / "out").exists()
