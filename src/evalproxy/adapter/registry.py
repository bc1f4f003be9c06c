"""Finding interceptors and hooks by the name a config gives them.

The decorator :func:`register_for_adapter` (NeMo Evaluator's name for it) only *marks* a class with its name and
description; nothing global is mutated at import. A :class:`Registry` is built per app by scanning modules for marked
classes: the built-in packages ``evalproxy.interceptors`` and ``evalproxy.hooks``, the modules and directories named
in ``discovery``, and the modules advertised by installed packages under the ``evalproxy.plugins`` entry point group.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel

from evalproxy.adapter.errors import ConfigError
from evalproxy.adapter.hooks import BaseHook

C = TypeVar("C", bound=type)

_MARK = "__evalproxy_plugin__"
ENTRY_POINT_GROUP = "evalproxy.plugins"
BUILTIN_PACKAGES = ("evalproxy.interceptors", "evalproxy.hooks")


def register_for_adapter(name: str, description: str = "") -> Callable[[C], C]:
    """Mark a class as an interceptor (or, if it subclasses :class:`BaseHook`, a post-eval hook) named ``name``.

    The class must carry a nested pydantic ``Params`` model: its fields are what ``config:`` may hold.
    """

    def mark(cls: C) -> C:
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise TypeError(f"{cls.__qualname__} must define a nested pydantic model 'Params'")
        cls.name = name  # type: ignore[attr-defined]  # the decorator is what gives the class its name
        cls.description = description or (inspect.getdoc(cls) or "").split("\n", 1)[0]  # type: ignore[attr-defined]
        setattr(cls, _MARK, name)
        return cls

    return mark


def plugin_kind(cls: type) -> str:
    return "hook" if issubclass(cls, BaseHook) else "interceptor"


@dataclass
class Registry:
    """Interceptor and hook classes by name, for one app."""

    interceptors: dict[str, type[Any]] = field(default_factory=dict)
    hooks: dict[str, type[Any]] = field(default_factory=dict)

    @classmethod
    def default(cls, modules: Iterable[str] = (), dirs: Iterable[str | Path] = ()) -> Registry:
        """Built-ins, entry points, then the ``discovery`` modules and dirs (later names override earlier ones)."""
        reg = cls()
        for pkg in BUILTIN_PACKAGES:
            reg.scan_package(pkg)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            reg.scan_module(ep.load() if ":" in ep.value else importlib.import_module(ep.value))
        for m in modules:
            try:
                mod = importlib.import_module(m)
            except ImportError as exc:
                raise ConfigError(f"cannot import module '{m}': {exc}", field="discovery.modules") from exc
            reg.scan_module(mod)
        for d in dirs:
            reg.scan_dir(Path(d))
        return reg

    def add(self, cls: type[Any]) -> None:
        name = getattr(cls, _MARK)
        (self.hooks if plugin_kind(cls) == "hook" else self.interceptors)[name] = cls

    def scan_module(self, mod: ModuleType | Any) -> None:
        if isinstance(mod, type) and hasattr(mod, _MARK):
            self.add(mod)
            return
        for obj in vars(mod).values():
            if isinstance(obj, type) and _MARK in obj.__dict__:
                self.add(obj)

    def scan_package(self, package: str) -> None:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__, prefix=package + "."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                self.scan_module(importlib.import_module(info.name))

    def scan_dir(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ConfigError(f"'{directory}' is not a directory", field="discovery.dirs")
        for path in sorted(directory.glob("*.py")):
            # Only files that register something are imported (as NeMo Evaluator does): a helper script lying
            # in the same folder is never run.
            if path.name.startswith("_") or "register_for_adapter" not in path.read_text(errors="replace"):
                continue
            mod_name = f"evalproxy_user_{abs(hash(str(path.resolve())))}_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot load '{path}'", field="discovery.dirs")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = mod
            try:
                spec.loader.exec_module(mod)
            except Exception as exc:
                raise ConfigError(f"importing '{path}' failed: {exc}", field="discovery.dirs") from exc
            self.scan_module(mod)

    def interceptor(self, name: str, field_path: str = "interceptors") -> type[Any]:
        if name == "endpoint":
            from evalproxy.adapter.upstream import EndpointInterceptor

            return EndpointInterceptor
        try:
            return self.interceptors[name]
        except KeyError:
            known = ", ".join(sorted({*self.interceptors, "endpoint"}))
            raise ConfigError(f"unknown interceptor '{name}'; known interceptors: {known}", field=field_path) from None

    def hook(self, name: str, field_path: str = "post_eval_hooks") -> type[Any]:
        try:
            return self.hooks[name]
        except KeyError:
            known = ", ".join(sorted(self.hooks)) or "(none)"
            raise ConfigError(f"unknown post-eval hook '{name}'; known hooks: {known}", field=field_path) from None
