"""``import nemo_evaluator.adapters...`` answered by :mod:`evalproxy.nemo_compat` when NeMo is not installed."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from types import ModuleType
from typing import Any

log = logging.getLogger("evalproxy.nemo_compat")

# The module names a NeMo Evaluator 0.2.8 plugin imports, and what each must hold.
_API = ("AdapterGlobalContext", "AdapterRequest", "AdapterRequestContext", "AdapterResponse", "FatalErrorException",
        "PostEvalHook", "RequestInterceptor", "RequestToResponseInterceptor", "ResponseInterceptor")
_MODULES: dict[str, tuple[str, ...]] = {
    "nemo_evaluator": (),
    "nemo_evaluator.adapters": ("register_for_adapter", *_API),
    "nemo_evaluator.adapters.decorators": ("register_for_adapter",),
    "nemo_evaluator.adapters.types": _API,
    "nemo_evaluator.logging": ("get_logger", "BaseLoggingParams"),
}


def _fill(mod: ModuleType) -> None:
    from pydantic import BaseModel

    import evalproxy.nemo_compat.api as api

    for name in _MODULES[mod.__name__]:
        if name == "get_logger":
            mod.get_logger = lambda name=None: logging.getLogger(name or "nemo_plugin")  # type: ignore[attr-defined]
        elif name == "BaseLoggingParams":
            mod.BaseLoggingParams = type(  # type: ignore[attr-defined]
                "BaseLoggingParams", (BaseModel,), {"__annotations__": {"log_level": str}, "log_level": "INFO"})
        else:
            setattr(mod, name, getattr(api, name))


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        if module.__name__ in ("nemo_evaluator", "nemo_evaluator.adapters"):
            module.__path__ = []
        _fill(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=fullname.count(".") < 2)


_FINDER = _Finder()


def install() -> bool:
    """Let NeMo plugin imports resolve here, unless the real NeMo Evaluator is importable. True: installed."""
    if _FINDER in sys.meta_path:
        return True
    if "nemo_evaluator" in sys.modules or importlib.util.find_spec("nemo_evaluator") is not None:
        return False
    sys.meta_path.append(_FINDER)
    log.debug("NeMo Evaluator plugin API provided by evalproxy.nemo_compat")
    return True
