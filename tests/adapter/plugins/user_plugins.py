"""User interceptors and a hook, loaded through discovery.dirs in the tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from evalproxy import BaseHook, BaseInterceptor, Next, Params, ProxyResponse, RequestContext, register_for_adapter


@register_for_adapter(name="add_header_field", description="Adds a field to every request body.")
class AddField(BaseInterceptor):
    modifies_request = True

    class Params(Params):
        field: str = "user_field"
        value: int = 1

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        if ctx.json is not None:
            ctx.set_json({**ctx.json, self.params.field: self.params.value})
        return await call_next(ctx)


@register_for_adapter(name="touch_file", description="Appends a line to a file each time the run ends.")
class TouchFile(BaseHook):
    class Params(Params):
        path: str

    async def __call__(self) -> None:
        await asyncio.to_thread(self._append)

    def _append(self) -> None:
        with Path(self.params.path).open("a") as f:
            f.write(f"{self.run.run_id}\n")
