"""Post-eval hooks: what runs once when a run ends (reports, summaries).

A hook is an async callable ``hook() -> None`` configured through ``__init__(params, run)``, registered with
:func:`evalproxy.adapter.registry.register_for_adapter` like an interceptor, and named in ``post_eval_hooks``.
"""

from __future__ import annotations

from typing import ClassVar, Generic, TypeVar

from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.run import RunContext

P = TypeVar("P", bound=Params)


class BaseHook(Generic[P]):
    """Base of post-eval hooks: ``BaseHook[MyParams]`` types ``self.params``; implement ``__call__``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: P, run: RunContext) -> None:
        self.params: P = params
        self.run = run

    async def __call__(self) -> None:
        raise NotImplementedError
