"""What a run's proxy tells its run record about each request: the generation parameters it saw (for
``results.yaml``) and one ledger line (``requests.jsonl``) with what came of the request."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.shape import first_choice, usage_of
from evalproxy.adapter.flow.state import CACHE_HIT, CACHE_KEY, CACHE_SLOT
from evalproxy.adapter.server.proxy import Observer
from evalproxy.records.observed import ObservedParams, RequestLedger


class Outcome(NamedTuple):
    """What the ledger keeps of an answer: its token counts and the finish reason of its first choice."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


def answer_outcome(resp: ProxyResponse | None) -> Outcome:
    """The ledger's view of an answer, cheap on purpose: a whole JSON answer is read through ``resp.json`` (parsed
    once, usually already by the chain); a stream gives the tokens of its usage event (the server saw it as it wrote
    the stream), and no finish reason. Chat and Responses usage names alike; no answer, or an error, gives none."""
    if resp is None:
        return Outcome()
    finish_reason = None
    usage: Any = None
    if resp.stream is None:
        data = resp.json if resp.ok else None
        usage = usage_of(data)
        choice = first_choice(data)
        finish_reason = choice.get("finish_reason") if choice is not None else None
    else:
        usage = resp.stream_usage
    if not isinstance(usage, dict):
        return Outcome(finish_reason=finish_reason)
    return Outcome(usage.get("prompt_tokens", usage.get("input_tokens")),
                   usage.get("completion_tokens", usage.get("output_tokens")), finish_reason)


def ledger_observer(observed: ObservedParams, ledger: RequestLedger) -> Observer:
    """A :attr:`Proxy.observers` entry feeding the run record: the body as sent upstream and what came of it."""

    def observe(ctx: RequestContext, resp: ProxyResponse | None, status: int) -> None:
        body = ctx.json
        if body is None or ctx.method != "POST":
            return
        observed.observe(body, ctx.path)
        state = ctx.state
        outcome = answer_outcome(resp)
        ledger.record(body, path=ctx.path, cache_key=state.get(CACHE_KEY), slot=state.get(CACHE_SLOT),
                      status=status, latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
                      prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                      finish_reason=outcome.finish_reason, cache_hit=bool(state.get(CACHE_HIT, False)))

    return observe
