"""progress_tracking: tell a webhook (and a file) how many answers the run has got, as NeMo Evaluator does.

Counts successful answers from the model; cache replays are not progress (listed after ``endpoint`` this interceptor
sits inside caching and never sees them; listed before it, it skips them). Every ``progress_tracking_interval``
answers, and every ``progress_tracking_interval_seconds`` if set, it sends ``{"samples_processed": N}`` to
``progress_tracking_url`` and writes N to ``<output_dir>/progress``; a restarted run continues from that file. The
webhook is called in the background: a slow or absent receiver never delays an answer, and its failures are logged
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.files import atomic_write_bytes
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.flow.answers import AnswerHandler, handle
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.flow.state import CACHE_HIT
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.progress")


class ProgressTrackingParams(BaseParams):
    nemo_fields = frozenset({"webhook_url", "every"})  # NeMo Evaluator fields with no effect here
    progress_tracking_url: str | None = Field(
        default="http://localhost:8000", description="Where to send progress; shell variables are expanded")
    progress_tracking_interval: int = Field(default=1, gt=0, description="Send every N answers")
    progress_tracking_interval_seconds: float | None = Field(default=None, gt=0, description="Also every N s")
    request_method: str = "PATCH"
    output_dir: str | None = Field(default=None, description="Where the progress file goes")


@register_for_adapter(name="progress_tracking", description="Reports the number of answers to a webhook and a file.")
class ProgressTrackingInterceptor(BaseInterceptor[ProgressTrackingParams]):
    best_effort = True

    Params = ProgressTrackingParams

    def __init__(self, params: ProgressTrackingParams, run: RunContext) -> None:
        super().__init__(params, run)
        self.url = os.path.expandvars(params.progress_tracking_url) if params.progress_tracking_url else None
        self.file = Path(params.output_dir) / "progress" if params.output_dir else None
        self.count = self._read_file()
        self.reported = self.count
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._warned = False
        self._in_order = asyncio.Lock()  # FIFO: reports reach the file and the webhook in the order they were made

    def _read_file(self) -> int:
        if self.file is None or not self.file.exists():
            return 0
        try:
            return int(self.file.read_text().strip() or 0)
        except (OSError, ValueError):
            log.warning("cannot read progress from %s; starting from 0", self.file)
            return 0

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        if self._timer is None and self.params.progress_tracking_interval_seconds:
            self._timer = asyncio.create_task(self._every(self.params.progress_tracking_interval_seconds))
        resp = await call_next(ctx)
        if resp.status != 200 or ctx.state.get(CACHE_HIT):
            return resp
        return await handle(resp, _Answered(self._answered))

    def _answered(self) -> None:
        self.count += 1
        if self.count % self.params.progress_tracking_interval == 0:
            self._report(self.count)

    def _report(self, n: int) -> None:
        self.reported = n
        task = asyncio.get_running_loop().create_task(self._send(n))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, n: int) -> None:
        async with self._in_order:
            await self._send_now(n)

    async def _send_now(self, n: int) -> None:
        if self.file is not None:
            await asyncio.to_thread(atomic_write_bytes, self.file, str(n).encode())
        if self.url is None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.request(self.params.request_method, self.url,
                                             json={"samples_processed": n}) as resp:
                await resp.read()
                if resp.status >= 400:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("progress tracking: cannot reach %s (%s); further failures are not logged", self.url,
                            exc)

    async def _every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            if self.count != self.reported:
                self._report(self.count)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self.count != self.reported:
            self._report(self.count)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=15)
        if self._session is not None:
            await self._session.close()


class _Answered(AnswerHandler):
    """Calls ``done`` once the answer is complete (a stream that breaks off never is)."""

    def __init__(self, done: Callable[[], None]) -> None:
        self.done = done

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        self.done()
        return []
