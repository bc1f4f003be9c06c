"""turn_counter: count the turns of each agent session and remind (or stop) it near its budget (NeMo 0.3+'s).

A session is named by the request's ``X-Session-Id`` header, else by a short hash of its first non-system message
(NeMo takes a ``/s/<id>/`` path prefix; evalproxy forwards paths unchanged, so the header stands in for it). Every
request is one turn. With ``max_turns`` set:

* a turn past ``max_turns`` is refused with a 429 whose error code is ``session_budget_exhausted``;
* ``trigger: threshold`` adds a notice from 80% of the budget and an urgent one from 95%; ``trigger: periodic`` adds a
  reminder of the turns left every ``interval`` turns;
* ``position: system_message`` appends the notice as a last system message; ``user_message`` appends it to the last
  user message's text (a blank line before it).

Without ``max_turns`` it only logs (every ``every`` turns), and says once that nothing will be injected. Sessions
idle for 15 minutes are forgotten.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.errors import ProxyError
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import SESSION_HEADER, RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.shape import content_text
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.turn_counter")

IDLE_SECONDS = 900.0
SWEEP_SECONDS = 300.0
WARN_AT, URGENT_AT = 0.80, 0.95


class SessionBudgetExhausted(ProxyError):
    """The session used all its turns."""

    status = 429
    type = "invalid_request_error"
    code = "session_budget_exhausted"


def session_of(ctx: RequestContext) -> str:
    given = ctx.headers.get(SESSION_HEADER)
    if given:
        return given
    body: Any = ctx.json
    for m in (body.get("messages") or []) if isinstance(body, dict) else ():
        if not isinstance(m, dict) or m.get("role") == "system":
            continue
        content = content_text(m.get("content"))
        if content:
            return hashlib.sha256(content.encode()).hexdigest()[:8]
    return "unknown"


class TurnCounterParams(Params):
    every: int = Field(default=1, description="Log every N turns of a session")
    max_turns: int | None = Field(default=None, ge=1, description="None: count and log only")
    position: Literal["system_message", "user_message"] = "system_message"
    trigger: Literal["threshold", "periodic"] = "threshold"
    interval: int = Field(default=1, ge=1, description="periodic: remind every N turns")


@register_for_adapter(name="turn_counter", description="Counts session turns; reminds or stops near the budget.")
class TurnCounterInterceptor(BaseInterceptor[TurnCounterParams]):
    modifies_request = True

    Params = TurnCounterParams

    def __init__(self, params: TurnCounterParams, run: RunContext,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(params, run)
        self.clock = clock
        self.turns: dict[str, tuple[int, float]] = {}
        self.swept_at = clock()
        if params.max_turns is None:
            log.warning("turn_counter: max_turns is not set, so no reminder is ever added (turns are only logged)")

    def notice(self, n: int) -> str | None:
        """What to tell the model at its ``n``-th turn, if anything."""
        p = self.params
        assert p.max_turns is not None
        left = p.max_turns - n
        if p.trigger == "periodic":
            return f"ENVIRONMENT REMINDER: {left} turns left to complete the task." if n % p.interval == 0 else None
        ratio = n / p.max_turns
        if ratio >= URGENT_AT:
            text = (f"URGENT: this is turn {n} of {p.max_turns}; {left} turn(s) left. Give your final answer now "
                    "and start no new work.")
        elif ratio >= WARN_AT:
            text = f"Turn {n} of {p.max_turns}; {left} turns left. Wrap up and prepare your final answer."
        else:
            return None
        return f"[SYSTEM] {text}" if p.position == "system_message" else text

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        key = session_of(ctx)
        now = self.clock()
        if now - self.swept_at > SWEEP_SECONDS:
            self.turns = {k: v for k, v in self.turns.items() if now - v[1] <= IDLE_SECONDS}
            self.swept_at = now
        n = self.turns.get(key, (0, now))[0] + 1
        self.turns[key] = (n, now)
        p = self.params
        if n == 1 or n % max(p.every, 1) == 0:
            log.info("session %s turn %d%s (%d active)", key, n, f"/{p.max_turns}" if p.max_turns else "",
                     len(self.turns))
        if p.max_turns is None:
            return await call_next(ctx)
        if n > p.max_turns:
            log.warning("session %s: turn %d refused (max_turns %d)", key, n, p.max_turns)
            raise SessionBudgetExhausted(f"Turn budget exhausted: {n}/{p.max_turns} turns used; this session is over.")
        body: Any = ctx.json
        text = self.notice(n)
        if text is not None and isinstance(body, dict) and isinstance(body.get("messages"), list):
            messages = [*body["messages"]]  # the request's own messages are kept; only the one changed is new
            if p.position == "system_message":
                messages.append({"role": "system", "content": text})
            else:
                _append_to_last_user(messages, text)
            ctx.set_json({**body, "messages": messages})
        return await call_next(ctx)


def _append_to_last_user(messages: list[Any], text: str) -> None:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            new: Any = f"{content}\n\n{text}" if content else text
        elif isinstance(content, list):
            last = content[-1] if content else None
            if isinstance(last, dict) and last.get("type") == "text":
                joined = f"{last.get('text', '')}\n\n{text}" if last.get("text") else text
                new = [*content[:-1], {**last, "text": joined}]
            else:
                new = [*content, {"type": "text", "text": text}]
        else:
            new = text
        messages[i] = {**m, "content": new}
        return
