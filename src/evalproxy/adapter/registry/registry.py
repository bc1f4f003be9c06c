"""Finding interceptors and hooks by the name a config gives them, and resolving a config against them.

The decorator :func:`register_for_adapter` (NeMo Evaluator's name for it) only *marks* a class with its name and
description; nothing global is mutated at import. A :class:`Registry` is built per app by scanning modules for marked
classes: the built-in packages ``evalproxy.interceptors`` and ``evalproxy.hooks``, the modules and directories named
in ``discovery``, and the modules advertised by installed packages under the ``evalproxy.plugins`` entry point group.
A built-in is imported when its name is first looked up (its module bears the name), so a server loads only the units
its config names; every built-in is imported before any plugin, and for the list of known names.
:func:`resolve` turns a loaded config into classes with validated params, in chain order: every name, param and
order error is a :class:`ConfigError` naming the file and field.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from evalproxy.adapter.chain.hook import BaseHook
from evalproxy.adapter.chain.interceptor import check_order
from evalproxy.adapter.config.schema import AdapterConfig, LoadedConfig, validation_error
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.params import unknown_fields

log = logging.getLogger("evalproxy.config")

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
    """``hook`` (a :class:`BaseHook`), ``terminal`` (a class that declares ``is_terminal``: the end of the chain,
    which sends requests on and calls nothing after it) or ``interceptor``."""
    if issubclass(cls, BaseHook):
        return "hook"
    return "terminal" if getattr(cls, "is_terminal", False) else "interceptor"


@dataclass
class Registry:
    """Interceptor and hook classes by name, for one app."""

    interceptors: dict[str, type[Any]] = field(default_factory=dict)
    hooks: dict[str, type[Any]] = field(default_factory=dict)
    terminals: dict[str, type[Any]] = field(default_factory=dict)
    """Chain ends by name (``endpoint``): named in ``interceptors`` like a layer, but the chain is folded around
    them rather than through them."""
    unscanned: tuple[str, ...] = ()
    """Built-in packages not imported yet: a name looked up and missing is first sought among their modules."""

    @classmethod
    def default(cls, modules: Iterable[str] = (), dirs: Iterable[str | Path] = ()) -> Registry:
        """Built-ins, entry points, then the ``discovery`` modules and dirs (later names override earlier ones)."""
        reg = cls(unscanned=BUILTIN_PACKAGES)
        plugins, modules, dirs = entry_points(group=ENTRY_POINT_GROUP), list(modules), list(dirs)
        if plugins or modules or dirs:  # built-ins first: a plugin's name overrides a built-in's
            reg.scan_builtins()
        for ep in plugins:
            try:
                reg.scan_module(ep.load() if ":" in ep.value else importlib.import_module(ep.value))
            except Exception as exc:  # a broken plugin package names itself, never a traceback
                raise ConfigError(
                    f"plugin entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) failed to load: "
                    f"{type(exc).__name__}: {exc}", field="discovery") from exc
        for m in modules:
            try:
                mod = importlib.import_module(m)
            except ImportError as exc:
                raise ConfigError(f"cannot import module '{m}': {exc}", field="discovery.modules") from exc
            reg.scan_module(mod)
        for d in dirs:
            reg.scan_dir(Path(d))
        return reg

    def add(self, cls: type[Any], *, override: bool = True) -> None:
        """Register ``cls`` under its name; ``override=False`` keeps a class already registered under it (a built-in
        imported late never replaces a plugin of the same name)."""
        name = getattr(cls, _MARK)
        tables = {"hook": self.hooks, "terminal": self.terminals, "interceptor": self.interceptors}
        table = tables[plugin_kind(cls)]
        if override or name not in table:
            table[name] = cls

    def scan_module(self, mod: ModuleType | Any, *, override: bool = True) -> None:
        if isinstance(mod, type) and hasattr(mod, _MARK):
            self.add(mod, override=override)
            return
        for obj in vars(mod).values():
            if isinstance(obj, type) and _MARK in obj.__dict__:
                self.add(obj, override=override)

    def scan_builtins(self) -> None:
        """Import the built-in packages' modules; their classes never replace one registered under the same name."""
        for pkg in self.unscanned:
            self.scan_package(pkg, override=False)
        self.unscanned = ()

    def _lookup(self, table: dict[str, type[Any]], name: str) -> type[Any] | None:
        """``table[name]``, importing the built-in module of that name, or else every built-in, when it is missing."""
        if name not in table:
            for pkg in self.unscanned:
                if name in {m.name for m in pkgutil.iter_modules(importlib.import_module(pkg).__path__)}:
                    self.scan_module(importlib.import_module(f"{pkg}.{name}"), override=False)
        if name not in table:
            self.scan_builtins()
        return table.get(name)

    def scan_package(self, package: str, *, override: bool = True) -> None:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__, prefix=package + "."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                self.scan_module(importlib.import_module(info.name), override=override)

    def scan_dir(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ConfigError(f"'{directory}' is not a directory", field="discovery.dirs")
        for path in sorted(directory.glob("*.py")):
            # Only files that register something are imported (as NeMo Evaluator does): a helper script lying
            # in the same folder is never run.
            if path.name.startswith("_") or "register_for_adapter" not in path.read_text(errors="replace"):
                continue
            mod_name = f"evalproxy_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}_{path.stem}"
            loaded = sys.modules.get(mod_name)
            if loaded is not None:  # imported already in this process: a file is executed once
                self.scan_module(loaded)
                continue
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot load '{path}'", field="discovery.dirs")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = mod
            try:
                spec.loader.exec_module(mod)
            except Exception as exc:
                del sys.modules[mod_name]
                raise ConfigError(f"importing '{path}' failed: {exc}", field="discovery.dirs") from exc
            self.scan_module(mod)

    def interceptor(self, name: str, field_path: str = "interceptors") -> type[Any]:
        """The interceptor or terminal a chain entry names (a config lists both in ``interceptors``)."""
        cls = self.terminals.get(name) or self._lookup(self.interceptors, name) or self.terminals.get(name)
        if cls is None:
            known = ", ".join(sorted({*self.interceptors, *self.terminals}))
            raise ConfigError(f"unknown interceptor '{name}'; known interceptors: {known}", field=field_path)
        return cls

    def terminal(self, name: str = "endpoint") -> type[Any]:
        cls = self.terminals.get(name)
        if cls is None:
            self._lookup(self.interceptors, name)  # a built-in terminal is found as a module of that name
            cls = self.terminals.get(name)
        if cls is None:
            raise ConfigError(f"no chain end called '{name}'", field="interceptors")
        return cls

    def hook(self, name: str, field_path: str = "post_eval_hooks") -> type[Any]:
        cls = self._lookup(self.hooks, name)
        if cls is None:
            known = ", ".join(sorted(self.hooks)) or "(none)"
            raise ConfigError(f"unknown post-eval hook '{name}'; known hooks: {known}", field=field_path)
        return cls


@dataclass
class Resolved:
    """A config resolved against a registry: classes with validated params, in config order."""

    registry: Registry
    interceptors: list[tuple[type[Any], Any]]
    """The chain's layers, outer first (the terminal not among them)."""
    hooks: list[tuple[type[Any], Any]]
    terminal: tuple[type[Any], Any]
    """The chain's end: the one the config names (``endpoint``), or the default one with its default params."""
    warnings: list[str] = field(default_factory=list)
    """Fields the config holds that no unit uses (each also logged), for the CLI to show."""


def resolve(loaded: LoadedConfig, registry: Registry | None = None, *, strict: bool | None = None) -> Resolved:
    """Check names, params and order of interceptors and hooks (discovery included); errors name file and field.

    A param no unit defines is a warning naming the unit, the field and the closest known name, or, when
    ``strict`` (default: the loaded config's own ``strict``), a :class:`ConfigError`. A field only another NeMo
    version than the file's (``loaded.shape``) has is ignored, as that version ignores it: warned about (an error
    when ``strict``) and removed from ``loaded.adapter``, so the effective config shows what runs.
    """
    adapter = loaded.adapter
    strict = loaded.strict if strict is None else strict
    warnings = list(loaded.warnings)
    try:
        reg = registry or Registry.default(adapter.discovery.modules, adapter.discovery.dirs)
        kw: dict[str, Any] = {"prefix": loaded.prefix, "file": loaded.source, "strict": strict, "warnings": warnings,
                              "shape": loaded.shape}
        chain = resolve_interceptors(adapter, reg, **kw)
        ends = [(cls, params) for cls, params in chain if plugin_kind(cls) == "terminal"]
        if not ends:
            default = reg.terminal()
            ends = [(default, default.Params())]
        layers = [(cls, params) for cls, params in chain if plugin_kind(cls) != "terminal"]
        hooks = resolve_hooks(adapter, reg, **kw)
        _without_foreign(loaded, reg)
        return Resolved(reg, layers, hooks, ends[0], warnings)
    except ConfigError as exc:
        if exc.file is None and loaded.source is not None:
            field_path = exc.field
            if field_path and field_path.startswith("discovery") and loaded.prefix:
                field_path = f"{loaded.prefix}.{field_path}"
            raise ConfigError(exc.reason, field=field_path, file=loaded.source) from None
        raise


def foreign_fields(cls: type[Any], config: dict[str, Any], shape: str | None) -> list[str]:
    """The fields of ``config`` that only another NeMo Evaluator version than ``shape`` gives ``cls``."""
    versions: dict[str, str] = getattr(cls.Params, "field_versions", {})
    return [n for n in config if shape is not None and versions.get(n, shape) != shape]


def _without_foreign(loaded: LoadedConfig, reg: Registry) -> None:
    """``loaded.adapter`` without the fields its file's version does not have, so that the effective config written
    to the run dir shows what runs (those fields were warned about, or refused under ``--strict-config``)."""
    entries = []
    changed = False
    for ic in loaded.adapter.interceptors:
        foreign = foreign_fields(reg.interceptor(ic.name), ic.config, loaded.shape) if ic.enabled else []
        changed = changed or bool(foreign)
        entries.append(ic.model_copy(update={"config": {k: v for k, v in ic.config.items() if k not in foreign}})
                       if foreign else ic)
    if changed:
        loaded.adapter = loaded.adapter.model_copy(update={"interceptors": entries})


def _of_version(cls: type[Any], config: dict[str, Any], field_path: str, file: str | None, strict: bool,
                warnings: list[str] | None, shape: str | None) -> dict[str, Any]:
    """``config`` without the fields of another NeMo Evaluator version than the file's ``shape``: a file keeps the
    meaning of its version, where such a field does nothing. Said in a warning, or, when ``strict``, an error naming
    the version (a Params declares ``field_versions``: its fields that only one version has)."""
    versions: dict[str, str] = getattr(cls.Params, "field_versions", {})
    foreign = foreign_fields(cls, config, shape)
    for name in foreign:
        text = (f"{cls.name}: '{name}' is a NeMo Evaluator {versions[name]} field; this file is shaped as "
                f"{shape}, where {cls.name} has no such field (it is ignored, as {shape} ignores it)")
        if strict:
            raise ConfigError(text, field=f"{field_path}.{name}", file=file)
        log.warning("%s (%s.%s)", text, field_path, name)
        if warnings is not None:
            warnings.append(f"{field_path}.{name}: {text}")
    return {k: v for k, v in config.items() if k not in foreign}


def _params(cls: type[Any], config: dict[str, Any], field_path: str, file: str | None,
            strict: bool = False, warnings: list[str] | None = None, shape: str | None = None) -> Any:
    config = _of_version(cls, config, field_path, file, strict, warnings, shape)
    for u in unknown_fields(cls.Params, config):
        text = u.describe(cls.name)
        if u.nemo:
            log.info("%s (%s)", text, field_path)
            continue
        if strict:
            raise ConfigError(text, field=f"{field_path}.{u.name}", file=file)
        log.warning("%s (%s.%s)", text, field_path, u.name)
        if warnings is not None:
            warnings.append(f"{field_path}.{u.name}: {text}")
    try:
        return cls.Params.model_validate(config)
    except ValidationError as exc:
        err = validation_error(exc, prefix=field_path, file=file)
        raise ConfigError(f"{cls.name}: {err.reason}", field=err.field, file=file) from None


def resolve_interceptors(
    adapter: AdapterConfig, registry: Registry, *, prefix: str = "", file: str | None = None,
    strict: bool = False, warnings: list[str] | None = None, shape: str | None = None,
) -> list[tuple[type[Any], Any]]:
    """(class, validated params) for each enabled chain entry, its terminal (``endpoint``) included, in config
    order."""
    p = f"{prefix}." if prefix else ""
    out: list[tuple[type[Any], Any]] = []
    for i, ic in adapter.enabled_interceptors():
        cls = registry.interceptor(ic.name, field_path=f"{p}interceptors[{i}].name")
        out.append((cls, _params(cls, ic.config, f"{p}interceptors[{i}].config", file, strict, warnings, shape)))
    names = [cls.name for cls, _ in out]
    try:
        check_order(names, {cls.name: cls for cls, _ in out}, plugin_kind)
    except ConfigError as exc:
        raise ConfigError(exc.reason, field=f"{p}interceptors", file=file) from None
    return out


def resolve_hooks(
    adapter: AdapterConfig, registry: Registry, *, prefix: str = "", file: str | None = None,
    strict: bool = False, warnings: list[str] | None = None, shape: str | None = None,
) -> list[tuple[type[Any], Any]]:
    """(class, validated params) for each enabled post-eval hook, in config order."""
    p = f"{prefix}." if prefix else ""
    out: list[tuple[type[Any], Any]] = []
    for i, h in adapter.enabled_hooks():
        cls = registry.hook(h.name, field_path=f"{p}post_eval_hooks[{i}].name")
        out.append((cls, _params(cls, h.config, f"{p}post_eval_hooks[{i}].config", file, strict, warnings, shape)))
    return out
