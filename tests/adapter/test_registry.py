"""The registry: entry points, discovery dirs and resolving names to classes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.registry.registry import ENTRY_POINT_GROUP, Registry, resolve
from tests.conftest import make_loaded


@pytest.fixture
def clean_modules() -> Iterator[None]:
    """Forget the user plugin modules a test imported (never evalproxy's own), so none outlives it."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("evalproxy_test_", "evalproxy_user_")):
            del sys.modules[name]


def install_distribution(site: Path, dist: str, entry_point: str, module: str, source: str) -> None:
    """A real installed distribution on ``site``: a module and a dist-info whose entry_points.txt advertises it."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point}\n")


class TestEntryPoints:
    @pytest.mark.parametrize(
        ("source", "attr", "error"),
        [
            ("import evalproxy_no_such_dependency_xyz\n", "", "ModuleNotFoundError"),
            ("raise RuntimeError('plugin is broken')\n", ":Plugin", "RuntimeError"),
            ("x = 1\n", ":Missing", "AttributeError"),
        ],
        ids=["missing-dependency", "raises-on-import", "missing-attribute"],
    )
    def test_broken_entry_point_is_a_config_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_modules: None, source: str, attr: str,
        error: str,
    ) -> None:
        """An evalproxy.plugins entry point whose module fails to load is a ConfigError naming the entry point."""
        module = f"evalproxy_test_broken_{tmp_path.name.replace('-', '_')}"
        install_distribution(tmp_path, "evalproxy_test_broken_plugin", f"broken_plugin = {module}{attr}", module,
                             source)
        monkeypatch.syspath_prepend(str(tmp_path))  # undone after the test
        with pytest.raises(ConfigError, match=r"entry point 'broken_plugin = ") as info:
            Registry.default()
        assert module in str(info.value) and error in str(info.value)
        assert info.value.field == "discovery"

    def test_working_entry_point_is_registered(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_modules: None
    ) -> None:
        """An entry point's module is scanned and its interceptors can be named in a config."""
        module = f"evalproxy_test_good_{tmp_path.name.replace('-', '_')}"
        source = ("from evalproxy import BaseInterceptor, register_for_adapter\n\n"
                  "@register_for_adapter(name='from_entry_point')\nclass FromEntryPoint(BaseInterceptor):\n"
                  "    pass\n")
        install_distribution(tmp_path, "evalproxy_test_good_plugin", f"good = {module}", module, source)
        monkeypatch.syspath_prepend(str(tmp_path))
        assert Registry.default().interceptor("from_entry_point").__module__ == module


COUNTED_PLUGIN = """\
from pathlib import Path

from evalproxy import BaseInterceptor, register_for_adapter

with Path({counter!r}).open("a") as f:
    f.write("imported\\n")


@register_for_adapter(name="counted", description="Counts how often its file is executed.")
class Counted(BaseInterceptor):
    pass
"""


class TestDiscoveryDirs:
    def test_file_is_executed_once(self, tmp_path: Path, clean_modules: None) -> None:
        """A file in discovery.dirs runs once per process even when registries are built twice, and both find it."""
        counter = tmp_path / "imports.txt"
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        (plugins / "counted.py").write_text(COUNTED_PLUGIN.format(counter=str(counter)))
        first = Registry.default(dirs=[plugins])
        second = Registry.default(dirs=[str(plugins)])
        loaded = make_loaded({"discovery": {"dirs": [str(plugins)]}, "interceptors": ["counted", "endpoint"]},
                             tmp_path, "http://127.0.0.1:9/v1")
        third = resolve(loaded).registry
        assert counter.read_text() == "imported\n"
        assert first.interceptor("counted") is second.interceptor("counted") is third.interceptor("counted")

    def test_file_that_fails_is_a_config_error(self, tmp_path: Path, clean_modules: None) -> None:
        """A discovery file that raises on import is a ConfigError naming the file and discovery.dirs."""
        (tmp_path / "bad.py").write_text("from evalproxy import register_for_adapter\nraise ValueError('nope')\n")
        with pytest.raises(ConfigError, match=r"bad\.py.*nope") as info:
            Registry.default(dirs=[tmp_path])
        assert info.value.field == "discovery.dirs"


class TestResolve:
    @pytest.mark.parametrize(
        ("adapter", "field", "known"),
        [
            ({"interceptors": ["no_such_interceptor", "endpoint"]}, "interceptors[0].name",
             ("caching", "endpoint", "reasoning", "system_message")),
            ({"interceptors": ["endpoint"], "post_eval_hooks": ["no_such_hook"]}, "post_eval_hooks[0].name",
             ("post_eval_report",)),
        ],
        ids=["interceptor", "hook"],
    )
    def test_unknown_name_lists_known_names(
        self, tmp_path: Path, adapter: dict[str, object], field: str, known: tuple[str, ...]
    ) -> None:
        """An unknown interceptor or hook name is a ConfigError naming the file and field and listing known names."""
        loaded = make_loaded(adapter, tmp_path, "http://127.0.0.1:9/v1")
        with pytest.raises(ConfigError, match=r"unknown .*'no_such_") as info:
            resolve(loaded)
        assert info.value.field == field and info.value.file == "test-config"
        for name in known:
            assert name in info.value.reason
