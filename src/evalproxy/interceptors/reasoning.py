"""reasoning: take the model's thinking out of its answers, and count it.

Reasoning is the text up to ``end_reasoning_token`` (``</think>``); a leading ``start_reasoning_token`` (``<think>``)
is optional, since chat templates often open the block in the prompt. With ``start_reasoning_token: null`` every
answer is taken to begin inside the block. An answer that has no reasoning is never blanked; an unfinished block
(start token, no end token) is kept as it is with ``include_if_not_finished`` (the default) or becomes ``""``.
A ``reasoning_content`` field set by the server is left untouched (and counted); with ``migrate_reasoning_content``
the stripped text is moved there instead of dropped.

Streams are stripped event by event: each choice has a small state machine that holds back only text that could be
the beginning of a token, so a ``</think>`` split across two events is still found, the client never sees reasoning,
and answer text is not delayed. Events that need no change are passed on byte for byte.

This interceptor sits outside ``caching`` in the default order, so the cache keeps the raw answer and the stripping
runs again on replay; its statistics therefore cover every answer of the run, replays included.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain import BaseInterceptor, Next
from evalproxy.adapter.chain import Params as BaseParams
from evalproxy.adapter.context import ProxyResponse, RequestContext, RunContext
from evalproxy.adapter.registry import register_for_adapter
from evalproxy.adapter.sse import DONE_EVENT, event_json, make_event
from evalproxy.adapter.stats import Summary
from evalproxy.adapter.thinking import Split, split_reasoning

log = logging.getLogger("evalproxy.reasoning")


def _held_back(text: str, token: str) -> int:
    """Length of the longest end of ``text`` that could be the beginning of ``token``."""
    for k in range(min(len(token) - 1, len(text)), 0, -1):
        if token.startswith(text[-k:]):
            return k
    return 0


@dataclass
class StreamSplitter:
    """Per-choice state machine for streamed content (see the module docstring)."""

    start: str | None
    end: str
    include_if_not_finished: bool
    mode: str = "detect"  # detect -> reasoning -> after_end -> answer, or detect -> answer
    pending: str = ""
    reasoning: list[str] = field(default_factory=list)
    original: list[str] = field(default_factory=list)
    answer_chars: list[str] = field(default_factory=list)
    started: bool = False
    finished: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        if self.start is None:
            self.mode = "reasoning"

    def feed(self, text: str) -> tuple[str, str]:
        """(answer text to emit now, reasoning text decided now)."""
        self.original.append(text)
        buf, self.pending = self.pending + text, ""
        out, thought = "", ""
        while True:
            if self.mode == "detect":
                assert self.start is not None
                head = buf.lstrip()
                if head.startswith(self.start):
                    self.mode, self.started = "reasoning", True
                    buf = head[len(self.start) :]
                    continue
                if self.start.startswith(head):
                    self.pending = buf  # not yet decidable: could still become the start token
                    break
                self.mode = "answer"
                continue
            if self.mode == "reasoning":
                i = buf.find(self.end)
                if i >= 0:
                    thought += buf[:i]
                    self.started = self.finished = True
                    self.mode = "after_end"
                    buf = buf[i + len(self.end) :]
                    continue
                k = _held_back(buf, self.end)
                thought += buf[: len(buf) - k]
                self.pending = buf[len(buf) - k :]
                break
            if self.mode == "after_end":
                buf = buf.lstrip()
                if not buf:
                    break
                self.mode = "answer"
                continue
            out += buf
            break
        if thought:
            self.reasoning.append(thought)
        self.answer_chars.append(out)
        return out, thought

    def close(self) -> str:
        """The text still owed to the client when the choice ends."""
        if self.closed:
            return ""
        self.closed = True
        if self.mode == "detect":
            out = self.pending
        elif self.mode == "reasoning":
            unfinished = self.started  # with start=None and no end token there was no reasoning at all
            if unfinished and not self.include_if_not_finished:
                out = ""
            else:
                out = "".join(self.original)
                if not unfinished:
                    self.reasoning.clear()
        else:
            out = ""
        self.pending = ""
        self.answer_chars.append(out)
        return out

    def result(self) -> Split:
        return Split("".join(self.answer_chars), "".join(self.reasoning) if self.started else None,
                     started=self.started, finished=self.finished)


class ReasoningStats:
    """NeMo Evaluator's reasoning statistics, from exact integer sums."""

    def __init__(self) -> None:
        self.total = 0
        self.with_reasoning = 0
        self.started = 0
        self.finished = 0
        self.unfinished = 0
        # Only sums, means and maxima are reported: no samples kept.
        self.words = {k: Summary(keep=0) for k in ("reasoning_words", "original_content_words", "updated_content_words",
                                             "reasoning_tokens", "updated_content_tokens")}
        self.lock = threading.Lock()

    def add(self, original: str, split: Split, extra_reasoning: str | None, usage: Any) -> None:
        with self.lock:
            self.total += 1
            reasoning = split.reasoning if split.reasoning is not None else extra_reasoning
            if split.started or extra_reasoning:
                self.with_reasoning += 1
            if split.started:
                self.started += 1
                if split.finished:
                    self.finished += 1
                else:
                    self.unfinished += 1
            self.words["original_content_words"].add(len(original.split()))
            self.words["updated_content_words"].add(len(split.answer.split()))
            if reasoning:
                self.words["reasoning_words"].add(len(reasoning.split()))
            if isinstance(usage, dict):
                details = usage.get("completion_tokens_details")
                rt = details.get("reasoning_tokens") if isinstance(details, dict) else None
                completion = usage.get("completion_tokens")
                if isinstance(rt, int):
                    self.words["reasoning_tokens"].add(rt)
                    if isinstance(completion, int):
                        self.words["updated_content_tokens"].add(max(0, completion - rt))

    def section(self) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                "description": "Reasoning statistics saved during processing",
                "total_responses": self.total,
                "responses_with_reasoning": self.with_reasoning,
                "reasoning_started_count": self.started,
                "reasoning_finished_count": self.finished,
                "reasoning_unfinished_count": self.unfinished,
                "reasoning_finished_ratio": round(self.finished / self.started, 6) if self.started else 0.0,
            }
            for name, s in self.words.items():
                out[f"avg_{name}"] = round(s.mean, 3)
                out[f"max_{name}"] = s.max or 0
                out[f"total_{name}"] = s.total
            return out


@register_for_adapter(name="reasoning", description="Strips <think> reasoning from answers and counts it.")
class ReasoningInterceptor(BaseInterceptor):
    class Params(BaseParams):
        start_reasoning_token: str | None = Field(default="<think>", description="null: answers start inside it")
        end_reasoning_token: str = Field(default="</think>", min_length=1)
        include_if_not_finished: bool = Field(default=True, description="Keep an unfinished block as it is")
        enable_reasoning_tracking: bool = True
        migrate_reasoning_content: bool = Field(
            default=False, description="Move stripped reasoning into reasoning_content instead of dropping it")
        # Accepted as NeMo Evaluator writes them; per-run statistics go to eval_factory_metrics.json.
        save_individuals: bool = False
        cache_dir: str | None = None
        logging_aggregated_stats_interval: int = Field(default=100, ge=0)

    def __init__(self, params: ReasoningInterceptor.Params, run: RunContext) -> None:
        super().__init__(params, run)
        self.stats = ReasoningStats()
        if params.enable_reasoning_tracking:
            run.metrics_file.register("reasoning", self.stats.section)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        if not resp.ok:
            return resp
        if resp.stream is not None:
            resp.stream = self._strip_stream(resp.stream)
            return resp
        body = resp.json
        if isinstance(body, dict) and body.get("choices") and self._strip_body(body):
            resp.set_json(body)
        return resp

    def _track(self, original: str, split: Split, extra: str | None, usage: Any) -> None:
        if not self.params.enable_reasoning_tracking:
            return
        self.stats.add(original, split, extra, usage)
        self.run.metrics_file.touch()
        n = self.params.logging_aggregated_stats_interval
        if n and self.stats.total % n == 0:
            log.info("reasoning: %s", self.stats.section())

    def _strip_body(self, body: dict[str, Any]) -> bool:
        p = self.params
        changed = False
        for choice in body["choices"]:
            if not isinstance(choice, dict):
                continue
            msg = choice.get("message")
            holder, field_name = (msg, "content") if isinstance(msg, dict) else (choice, "text")
            content = holder.get(field_name)
            if not isinstance(content, str):
                continue
            extra = msg.get("reasoning_content") if isinstance(msg, dict) else None
            split = split_reasoning(content, p.start_reasoning_token, p.end_reasoning_token,
                                    p.include_if_not_finished)
            self._track(content, split, extra if isinstance(extra, str) else None, body.get("usage"))
            if split.answer != content:
                holder[field_name] = split.answer
                changed = True
                if p.migrate_reasoning_content and isinstance(msg, dict) and split.reasoning and not extra:
                    msg["reasoning_content"] = split.reasoning
        return changed

    async def _strip_stream(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        p = self.params
        splitters: dict[int, StreamSplitter] = {}
        extra: dict[int, list[str]] = {}
        template: dict[str, Any] | None = None
        usage: Any = None

        def splitter(i: int) -> StreamSplitter:
            if i not in splitters:
                splitters[i] = StreamSplitter(p.start_reasoning_token, p.end_reasoning_token,
                                              p.include_if_not_finished)
            return splitters[i]

        def finish(i: int) -> str:
            s = splitters.get(i)
            if s is None or s.closed:
                return ""
            tail = s.close()
            got = "".join(extra.get(i, [])) or None
            self._track("".join(s.original), s.result(), got, usage)
            return tail

        async for event in stream:
            obj = event_json(event)
            if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
                if event == DONE_EVENT:
                    for tail_event in self._flush(splitters, finish, template):
                        yield tail_event
                yield event
                continue
            if obj.get("usage"):
                usage = obj["usage"]
            changed = False
            for ch in obj["choices"]:
                if not isinstance(ch, dict):
                    continue
                i = ch.get("index", 0)
                delta = ch.get("delta")
                holder, key = (delta, "content") if isinstance(delta, dict) else (ch, "text")
                text = holder.get(key) if isinstance(holder, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("reasoning_content"), str):
                    extra.setdefault(i, []).append(delta["reasoning_content"])
                if isinstance(text, str) and text:
                    template = template or {k: obj.get(k) for k in ("id", "object", "created", "model")}
                    out, thought = splitter(i).feed(text)
                    if out != text:
                        holder[key] = out
                        changed = True
                    if thought and p.migrate_reasoning_content and isinstance(delta, dict):
                        delta["reasoning_content"] = delta.get("reasoning_content", "") + thought
                        changed = True
                if ch.get("finish_reason") and i in splitters:
                    tail = finish(i)
                    if tail:
                        holder[key] = (holder.get(key) or "") + tail
                        changed = True
            yield make_event(obj) if changed else event
        # A stream that ended without [DONE]: still give the client what it is owed.
        for tail_event in self._flush(splitters, finish, template):
            yield tail_event

    @staticmethod
    def _flush(splitters: dict[int, StreamSplitter], finish: Any, template: dict[str, Any] | None) -> list[bytes]:
        events = []
        for i in sorted(splitters):
            tail = finish(i)
            if tail:
                chunk = {**(template or {}), "choices": [{"index": i, "delta": {"content": tail},
                                                          "finish_reason": None}]}
                events.append(make_event(chunk))
        return events
