"""Post-eval hooks: what runs once when a run ends (reports, summaries).

A hook is an async callable ``hook(run) -> None`` configured through ``__init__(params, run)``, registered with
:func:`evalproxy.adapter.registry.register_for_adapter` like an interceptor, and named in ``post_eval_hooks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from evalproxy.adapter.chain import Params as BaseParams

if TYPE_CHECKING:
    from evalproxy.adapter.context import RunContext


class BaseHook:
    """Base of post-eval hooks; subclasses declare a nested ``Params`` model and implement ``__call__``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    class Params(BaseParams):
        pass

    def __init__(self, params: Any, run: RunContext) -> None:
        self.params = params
        self.run = run

    async def __call__(self) -> None:
        raise NotImplementedError
