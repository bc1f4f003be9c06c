"""reasoning: take the model's thinking out of its answers, and count it.

Reasoning is the text up to ``end_reasoning_token`` (``</think>``); a leading ``start_reasoning_token`` (``<think>``)
is optional, since chat templates often open the block in the prompt. With ``start_reasoning_token: null`` every
answer is taken to begin inside the block. An answer that has no reasoning is never blanked; an unfinished block
(start token, no end token) is kept as it is with ``include_if_not_finished`` (the default) or becomes ``""``.
A ``reasoning_content`` field set by the server is left untouched (and counted); with ``migrate_reasoning_content``
the stripped text is moved there instead of dropped. With ``add_reasoning: false`` answers pass untouched, except that
``migrate_reasoning_content`` then does what it does in NeMo Evaluator: ``reasoning_content`` goes back into
``content`` between the two tokens.

Streams are stripped event by event, with the same result as a whole answer: each choice has a small state machine.
An answer that opens with the start token is reasoning from there on, and only text that could be the beginning of
the end token is held back, so a ``</think>`` split across two events is still found. An answer that does not open
with it may still end a block the prompt opened, so it is held until the end token comes (everything before it was
reasoning) or the choice ends (it was all answer); its events still flow, with empty content, so the client's
connection never goes quiet. The client never sees reasoning. Events that need no change pass byte for byte.

This interceptor sits outside ``caching`` in the default order, so the cache keeps the raw answer and the stripping
runs again on replay; its statistics therefore cover every answer of the run, replays included (NeMo Evaluator skips
replays; a resumed run here counts the whole run again, so no statistics cache is needed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from evalproxy.adapter.chain import BaseInterceptor, Next
from evalproxy.adapter.chain import Params as BaseParams
from evalproxy.adapter.context import STREAM_USAGE, ProxyResponse, RequestContext, RunContext
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
    """Per-choice state machine for streamed content; its result equals :func:`split_reasoning` on the whole text.

    Modes: ``detect`` (is the start token coming?), ``marked`` (inside a block the start token opened: reasoning is
    decided as it arrives, only a possible end-token prefix is held), ``unmarked`` (no start token: reasoning if an end
    token follows, else the answer; held until that is known), ``after_end`` (dropping whitespace after the end
    token) and ``answer`` (passed on as it arrives).
    """

    start: str | None
    end: str
    include_if_not_finished: bool
    hold_unmarked: bool = True
    """False: an answer that does not open with the start token streams at once (a block opened by the prompt leaks)."""
    mode: str = "detect"
    pending: str = ""
    scanned: int = 0  # how much of ``pending`` was already searched for the end token (unmarked mode)
    reasoning: list[str] = field(default_factory=list)
    original: list[str] = field(default_factory=list)
    answer_parts: list[str] = field(default_factory=list)
    started: bool = False
    finished: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        if not self.start:
            self.mode = "unmarked"

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
                    self.mode, self.started = "marked", True
                    buf = head[len(self.start) :]
                    continue
                if self.start.startswith(head):
                    self.pending = buf  # whitespace or a piece of the start token: not decidable yet
                    break
                self.mode = "unmarked" if self.hold_unmarked else "answer"
                continue
            if self.mode in ("marked", "unmarked"):
                at = max(0, self.scanned - len(self.end) + 1) if self.mode == "unmarked" else 0
                i = buf.find(self.end, at)
                if i >= 0:
                    thought += buf[:i]
                    self.started = self.finished = True
                    self.mode, self.scanned = "after_end", 0
                    buf = buf[i + len(self.end) :]
                    continue
                if self.mode == "unmarked":
                    # Models whose chat template opens the block in the prompt never send the start token, so
                    # anything may still turn out to be reasoning until the end token comes or the choice ends.
                    self.pending, self.scanned = buf, len(buf)
                    break
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
        self.answer_parts.append(out)
        return out, thought

    def close(self) -> str:
        """The text still owed to the client when the choice ends."""
        if self.closed:
            return ""
        self.closed = True
        out = ""
        if self.mode in ("detect", "unmarked"):
            out = self.pending  # no end token came: it was all answer
        elif self.mode == "marked":  # unfinished block
            self.reasoning.append(self.pending)
            out = "".join(self.original) if self.include_if_not_finished else ""
        self.pending = ""
        self.answer_parts.append(out)
        return out

    def result(self) -> Split:
        return Split("".join(self.answer_parts), "".join(self.reasoning) if self.started else None,
                     started=self.started, finished=self.finished)


def usage_tokens(usage: Any) -> tuple[int | None, int | None]:
    """(reasoning tokens, answer tokens) of a response's usage, where the server reports them.

    Reasoning tokens come from ``usage.reasoning_tokens`` or ``{completion,output}_tokens_details.reasoning_tokens``;
    answer tokens from ``usage.content_tokens``, else completion tokens minus reasoning tokens.
    """
    if not isinstance(usage, dict):
        return None, None
    rt = usage.get("reasoning_tokens")
    if not isinstance(rt, int):
        rt = None
        for key in ("completion_tokens_details", "output_tokens_details"):
            details = usage.get(key)
            if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
                rt = details["reasoning_tokens"]
                break
    ct = usage.get("content_tokens")
    if not isinstance(ct, int):
        ct = None
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if rt is not None and isinstance(completion, int):
            ct = max(0, completion - rt)
    return rt, ct


class ReasoningStats:
    """NeMo Evaluator's reasoning statistics, from exact integer sums; averages are computed when read.

    ``reasoning_finished_ratio`` is finished / started (NeMo Evaluator divides by responses_with_reasoning, which
    can exceed 1 when a block is empty); both are equal whenever every started block has words in it.
    """

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

    def add(self, original: str, split: Split, server_reasoning: str | None, usage: Any) -> None:
        """Count one answer. ``server_reasoning`` is a ``reasoning_content`` the server sent; ``usage`` is given
        with the first choice of a response only, since its token counts cover the whole response."""
        rt, ct = usage_tokens(usage)
        with self.lock:
            self.total += 1
            if server_reasoning and server_reasoning.strip():
                # As NeMo Evaluator counts it: started if there is reasoning, finished if an answer followed.
                started, finished = True, bool(split.answer.strip())
                reasoning = server_reasoning + (split.reasoning or "")
            else:
                started, finished, reasoning = split.started, split.finished, split.reasoning or ""
            reasoning_words = len(reasoning.split())
            if reasoning_words:
                self.with_reasoning += 1
            if started:
                self.started += 1
                if finished:
                    self.finished += 1
                else:
                    self.unfinished += 1
            self.words["reasoning_words"].add(reasoning_words)
            self.words["original_content_words"].add(len(original.split()))
            self.words["updated_content_words"].add(len(split.answer.split()))
            if rt is not None:
                self.words["reasoning_tokens"].add(rt)
            if ct is not None:
                self.words["updated_content_tokens"].add(ct)

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
                out[f"avg_{name}"] = round(s.mean, 3) if s.count else None
                out[f"max_{name}"] = s.max
                out[f"total_{name}"] = s.total
            return out


@dataclass
class _Choice:
    """One streamed choice: its splitter and what the server sent as reasoning_content."""

    splitter: StreamSplitter
    server_reasoning: list[str] = field(default_factory=list)
    counted: bool = False


@register_for_adapter(name="reasoning", description="Strips <think> reasoning from answers and counts it.")
class ReasoningInterceptor(BaseInterceptor):
    class Params(BaseParams):
        start_reasoning_token: str | None = Field(default="<think>", description="null: answers start inside it")
        end_reasoning_token: str = Field(default="</think>", min_length=1)
        include_if_not_finished: bool = Field(default=True, description="Keep an unfinished block as it is")
        enable_reasoning_tracking: bool = Field(default=True, description="Count reasoning statistics")
        add_reasoning: bool = Field(
            default=True, description="Process reasoning (off: answers pass untouched, except for migration)")
        migrate_reasoning_content: bool = Field(
            default=False,
            description="With add_reasoning: move stripped reasoning into reasoning_content instead of dropping "
            "it. Without (NeMo Evaluator's meaning): move reasoning_content into content between the tokens")
        # Accepted as NeMo Evaluator writes them. Statistics go to eval_factory_metrics.json, written periodically
        # and at shutdown; they count every answer, cache replays included, so a resumed run recounts them and
        # there is nothing to restore from a stats cache.
        stats_file_saving_interval: int | None = None
        enable_caching: bool = True
        cache_dir: str | None = None
        save_individuals: bool = False
        logging_aggregated_stats_interval: int = Field(default=100, ge=0)
        stream_unmarked: Literal["hold", "pass"] = Field(
            default="hold",
            description="A streamed answer that does not open with the start token: 'hold' it until the end token "
            "or the end (never leaks a block the chat template opened; the answer arrives at once), or 'pass' it "
            "through as it streams (for models that always write the start token, or none at all)")

    def __init__(self, params: ReasoningInterceptor.Params, run: RunContext) -> None:
        super().__init__(params, run)
        self.stats = ReasoningStats()
        self._tracking = params.enable_reasoning_tracking and params.add_reasoning
        if self._tracking:
            run.metrics_file.register("reasoning", self.stats.section)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        p = self.params
        if not resp.ok or not (p.add_reasoning or p.migrate_reasoning_content):
            return resp
        if resp.stream is not None:
            if p.add_reasoning:
                resp.stream = self._strip_stream(resp.stream, ctx)
            else:
                resp.stream = self._unmigrate_stream(resp.stream)
            return resp
        body = resp.json
        if isinstance(body, dict) and isinstance(body.get("choices"), list):
            changed = self._strip_body(body) if p.add_reasoning else self._unmigrate_body(body)
            if changed:
                resp.set_json(body)
        return resp

    def _track(self, original: str, split: Split, server_reasoning: str | None, usage: Any) -> None:
        if not self._tracking:
            return
        self.stats.add(original, split, server_reasoning, usage)
        self.run.metrics_file.touch()
        n = self.params.logging_aggregated_stats_interval
        if n and self.stats.total % n == 0:
            log.info("reasoning: %s", self.stats.section())

    # -- whole answers ---------------------------------------------------------------------------------------------
    def _strip_body(self, body: dict[str, Any]) -> bool:
        p = self.params
        changed = False
        usage = body.get("usage")
        for choice in body["choices"]:
            if not isinstance(choice, dict):
                continue
            msg = choice.get("message")
            holder, key = (msg, "content") if isinstance(msg, dict) else (choice, "text")
            content = holder.get(key)
            if not isinstance(content, str):
                continue
            rc = msg.get("reasoning_content") if isinstance(msg, dict) else None
            server_reasoning = rc if isinstance(rc, str) else None
            split = split_reasoning(content, p.start_reasoning_token, p.end_reasoning_token,
                                    p.include_if_not_finished)
            self._track(content, split, server_reasoning, usage)
            usage = None  # the response's token counts are counted once, with its first choice
            if split.answer != content:
                holder[key] = split.answer
                changed = True
                if (p.migrate_reasoning_content and isinstance(msg, dict) and split.reasoning
                        and not server_reasoning):
                    msg["reasoning_content"] = split.reasoning
        return changed

    def _unmigrate_body(self, body: dict[str, Any]) -> bool:
        """NeMo Evaluator's migration with add_reasoning off: reasoning_content goes back into content."""
        start, end = self.params.start_reasoning_token or "", self.params.end_reasoning_token
        changed = False
        for choice in body["choices"]:
            msg = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(msg, dict):
                continue
            rc = msg.get("reasoning_content")
            if isinstance(rc, str) and rc.strip():
                msg["content"] = f"{start}{rc}{end}{msg.get('content') or ''}"
                changed = True
        return changed

    # -- streams ---------------------------------------------------------------------------------------------------
    async def _strip_stream(self, stream: AsyncIterator[bytes], ctx: RequestContext) -> AsyncIterator[bytes]:
        p = self.params
        choices: dict[int, _Choice] = {}
        template: dict[str, Any] = {}
        usage: Any = None

        def choice(i: int) -> _Choice:
            c = choices.get(i)
            if c is None:
                c = choices[i] = _Choice(StreamSplitter(p.start_reasoning_token, p.end_reasoning_token,
                                                        p.include_if_not_finished, p.stream_unmarked == "hold"))
            return c

        def flush() -> list[bytes]:
            """Events carrying what unfinished choices still owe the client (a stream without finish_reason)."""
            events = []
            for i in sorted(choices):
                tail = choices[i].splitter.close()
                if tail:
                    key = "text" if template.get("object") == "text_completion" else "content"
                    ch: dict[str, Any] = {"index": i, "finish_reason": None}
                    if key == "text":
                        ch["text"] = tail
                    else:
                        ch["delta"] = {"content": tail}
                    events.append(make_event({**template, "choices": [ch]}))
            return events

        def count() -> None:
            u = usage or ctx.state.get(STREAM_USAGE)
            for i in sorted(choices):
                c = choices[i]
                if not c.counted:
                    c.counted = True
                    s = c.splitter
                    self._track("".join(s.original), s.result(), "".join(c.server_reasoning) or None, u)
                    u = None

        async for event in stream:
            obj = event_json(event)
            if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
                if event == DONE_EVENT:
                    for tail_event in flush():
                        yield tail_event
                    count()
                elif isinstance(obj, dict) and obj.get("usage"):
                    usage = obj["usage"]
                yield event
                continue
            if obj.get("usage"):
                usage = obj["usage"]  # the final usage chunk comes after finish_reason: count at the end
            if not template:
                template = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
            changed = False
            for ch in obj["choices"]:
                if not isinstance(ch, dict):
                    continue
                i = ch.get("index", 0)
                c = choice(i if isinstance(i, int) else 0)
                delta = ch.get("delta")
                holder, key = (delta, "content") if isinstance(delta, dict) else (ch, "text")
                text = holder.get(key)
                if isinstance(delta, dict) and isinstance(delta.get("reasoning_content"), str):
                    c.server_reasoning.append(delta["reasoning_content"])
                if isinstance(text, str) and text:
                    out, thought = c.splitter.feed(text)
                    if out != text:
                        holder[key] = out
                        changed = True
                    if thought and p.migrate_reasoning_content and isinstance(delta, dict) and not c.server_reasoning:
                        delta["reasoning_content"] = thought
                        changed = True
                if ch.get("finish_reason"):
                    tail = c.splitter.close()
                    if tail:
                        holder[key] = (holder.get(key) or "") + tail
                        changed = True
            yield make_event(obj) if changed else event
        # A stream that ended without [DONE]: still give the client what it is owed.
        for tail_event in flush():
            yield tail_event
        count()

    async def _unmigrate_stream(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The stream form of :meth:`_unmigrate_body`: reasoning_content deltas become content between tokens."""
        start, end = self.params.start_reasoning_token or "", self.params.end_reasoning_token
        state: dict[Any, str] = {}  # choice index -> "open" (start token sent) or "closed" (end token sent)
        async for event in stream:
            obj = event_json(event)
            if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
                yield event
                continue
            changed = False
            for ch in obj["choices"]:
                delta = ch.get("delta") if isinstance(ch, dict) else None
                if not isinstance(delta, dict) or ("reasoning_content" not in delta and not state):
                    continue
                i = ch.get("index", 0)
                st = state.get(i)
                rc = delta.pop("reasoning_content", None)
                changed = changed or rc is not None
                content = delta.get("content")
                text = ""
                if isinstance(rc, str) and rc:
                    text = (start if st is None else "") + rc
                    st = st or "open"
                if st == "open" and ((isinstance(content, str) and content) or ch.get("finish_reason")):
                    text += end
                    st = "closed"
                if st is not None:
                    state[i] = st
                if text:
                    delta["content"] = text + (content if isinstance(content, str) else "")
                    changed = True
            yield make_event(obj) if changed else event
