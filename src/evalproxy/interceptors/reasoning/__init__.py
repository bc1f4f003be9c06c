"""reasoning: take the model's thinking out of its answers, and count it.

Reasoning is the text up to ``end_reasoning_token`` (``</think>``); a leading ``start_reasoning_token`` (``<think>``)
is optional, since chat templates often open the block in the prompt. With ``start_reasoning_token: null`` every
answer is taken to begin inside the block. An unfinished block (start token, no end token) is kept as it is with
``include_if_not_finished`` (the default) or becomes ``""``. With a start token, an answer that has no reasoning is
never blanked (NeMo Evaluator blanks every answer lacking the end token: a defect we do not copy); with
``start_reasoning_token: null`` and ``include_if_not_finished: false`` an answer without the end token is an
unfinished block and becomes ``""``, as in NeMo. Only assistant messages (and completions text) are touched.
A ``reasoning_content`` field set by the server is left untouched (and counted); with ``migrate_reasoning_content``
the stripped text is moved there instead of dropped. With ``add_reasoning: false`` answers pass untouched, except that
``migrate_reasoning_content`` then does what it does in NeMo Evaluator: ``reasoning_content`` goes back into
``content`` between the two tokens.

Whole answers and streams take one path (:mod:`evalproxy.adapter.flow.answers`): each choice has a small state
machine (:class:`~evalproxy.interceptors.reasoning.thinking.StreamSplitter`) fed a whole content at once or the
content of each event as it passes, with the same result.
An answer that opens with the start token is reasoning from there on, and only text that could be the beginning of
the end token is held back, so a ``</think>`` split across two events is still found. An answer that does not open
with it may still end a block the prompt opened, so it is held until the end token comes (everything before it was
reasoning) or the choice ends (it was all answer); its events still flow, with empty content, so the client's
connection never goes quiet. The client never sees reasoning. Events that need no change pass byte for byte.

This interceptor sits outside ``caching`` in the default order, so the cache keeps the raw answer and the stripping
runs again on replay. Statistics: each run keeps its numbers in ``<cache_dir>/run-<run_id>.json`` (default
``<output_dir>/reasoning_stats``), and the section covers every run in that directory, as NeMo Evaluator's persisted
statistics do. The first run there counts every answer it serves; a run that resumes one (earlier files exist)
counts only answers fresh from the model, since the replayed ones were counted by the run that paid for them.

Streams that do not open with the start token (``stream_unmarked``): a model whose chat template opens the block
sends only the end token, so such a stream may be reasoning until ``</think>`` comes. ``hold`` keeps every such
stream until the end token or its end (nothing leaks; the answer arrives at once); ``pass`` streams it as it comes;
``auto`` (the default) decides per model name from what its answers have shown: a block only closed (the template
opens it) holds that model's streams for good; a model that writes its own start token, or that gave
``PLAIN_ANSWERS_TO_DECIDE`` answers ended by ``stop`` with no block at all, streams event by event; an undecided
model is held. What the answers showed is kept with the run's statistics, so a run that resumes one (same statistics
dir) starts decided.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.files import dump_json, load_run_files, run_files_dir
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.core.summary import Summary, copy_fields, dump_fields, load_fields, merge_fields
from evalproxy.adapter.flow.answers import AnswerHandler, handle
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse, reasoning_tokens
from evalproxy.adapter.flow.run import PersistedStats, RunContext, RunFile
from evalproxy.adapter.flow.shape import Split, split_reasoning
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.flow.state import CACHE_HIT
from evalproxy.adapter.registry import register_for_adapter
from evalproxy.interceptors.reasoning.thinking import StreamSplitter

log = logging.getLogger("evalproxy.reasoning")

__all__ = ["ReasoningInterceptor", "ReasoningParams", "ReasoningStats", "Split", "StreamSplitter",
           "split_reasoning", "usage_tokens"]


def usage_tokens(usage: Any) -> tuple[int | None, int | None]:
    """(reasoning tokens, answer tokens) of a response's usage, where the server reports them.

    Reasoning tokens come from ``usage.reasoning_tokens`` or ``{completion,output}_tokens_details.reasoning_tokens``;
    answer tokens from ``usage.content_tokens``, else completion tokens minus reasoning tokens.
    """
    if not isinstance(usage, dict):
        return None, None
    rt = reasoning_tokens(usage)
    ct = usage.get("content_tokens")
    if not isinstance(ct, int):
        ct = None
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if rt is not None and isinstance(completion, int):
            ct = max(0, completion - rt)
    return rt, ct


_ASCII_SPACES = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
"""The ASCII characters ``str.split()`` splits at."""
_MARKS = bytes.maketrans(bytes(range(128)), bytes(32 if i in _ASCII_SPACES else 120 for i in range(128)))


def count_words(text: str) -> int:
    """``len(text.split())``, without making the words: an ASCII text (most answers) is marked in one pass, each
    space ``b" "`` and every other character ``b"x"``, and its words are where an ``x`` follows a space; any other
    text is split (Unicode has spaces of its own)."""
    if not text.isascii():
        return len(text.split())
    marks = text.encode("ascii").translate(_MARKS)
    return marks.count(b" x") + marks.startswith(b"x")


def _word_summaries() -> dict[str, Summary]:
    # Only sums, means and maxima are reported: no samples kept.
    return {k: Summary(keep=0) for k in ("reasoning_words", "original_content_words", "updated_content_words",
                                         "reasoning_tokens", "updated_content_tokens")}


@dataclass
class ReasoningStats:
    """NeMo Evaluator's reasoning statistics, from exact integer sums; averages are computed when read. Persisted,
    loaded and merged field by field (:func:`~evalproxy.adapter.core.summary.dump_fields` and its kin).

    ``reasoning_finished_ratio`` is finished / started (NeMo Evaluator divides by responses_with_reasoning, which
    can exceed 1 when a block is empty); both are equal whenever every started block has words in it.
    """

    total: int = 0
    with_reasoning: int = 0
    started: int = 0
    finished: int = 0
    unfinished: int = 0
    words: dict[str, Summary] = field(default_factory=_word_summaries)

    def add(self, original: str, split: Split, server_reasoning: str | None, usage: Any) -> None:
        """Count one answer. ``server_reasoning`` is a ``reasoning_content`` the server sent; ``usage`` is given
        with the first choice of a response only, since its token counts cover the whole response."""
        rt, ct = usage_tokens(usage)
        self.total += 1
        if server_reasoning and server_reasoning.strip():
            # As NeMo Evaluator counts it: started if there is reasoning, finished if an answer followed.
            started, finished = True, bool(split.answer.strip())
            reasoning = server_reasoning + (split.reasoning or "")
        else:
            started, finished, reasoning = split.started, split.finished, split.reasoning or ""
        reasoning_words = count_words(reasoning)
        if reasoning_words:
            self.with_reasoning += 1
        if started:
            self.started += 1
            if finished:
                self.finished += 1
            else:
                self.unfinished += 1
        self.words["reasoning_words"].add(reasoning_words)
        original_words = count_words(original)
        self.words["original_content_words"].add(original_words)
        # Most answers have no reasoning: their text is unchanged, and a long one is costly to split twice.
        answer = split.answer
        self.words["updated_content_words"].add(original_words if answer == original else count_words(answer))
        if rt is not None:
            self.words["reasoning_tokens"].add(rt)
        if ct is not None:
            self.words["updated_content_tokens"].add(ct)

    def merge(self, other: ReasoningStats) -> ReasoningStats:
        return merge_fields(self, other, ReasoningStats())

    def copy(self) -> ReasoningStats:
        """The same numbers, to read while this one goes on counting."""
        return copy_fields(self)

    def dump(self) -> dict[str, Any]:
        """The numbers as JSON, to persist (no samples are kept)."""
        return dump_fields(self, 0)

    @classmethod
    def load(cls, data: dict[str, Any]) -> ReasoningStats:
        return load_fields(cls(), data)

    def section(self) -> dict[str, Any]:
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


class _Snapshot:
    """This run's numbers and what its answers showed of each model, as taken on the event loop, with the earlier
    runs' totals (read at start, never changed)."""

    def __init__(self, path: Path, earlier: ReasoningStats, mine: ReasoningStats, models: dict[str, str]) -> None:
        self.path, self.earlier, self.mine, self.models = path, earlier, mine, models

    def files(self) -> list[RunFile]:
        return [RunFile(self.path, dump_json({**self.mine.dump(), "models": self.models}))]

    def section(self) -> dict[str, Any]:
        """Every run in the statistics dir."""
        return self.earlier.merge(self.mine).section()


class ReasoningParams(Params):
    # NeMo Evaluator fields with no effect here: statistics are persisted per run whatever they say.
    nemo_fields = frozenset({"stats_file_saving_interval", "enable_caching", "save_individuals"})
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
    cache_dir: str | None = Field(default=None, description="Where runs keep their statistics "
                                  "(default <output_dir>/reasoning_stats)")
    logging_aggregated_stats_interval: int = Field(default=100, ge=0)
    stream_unmarked: Literal["auto", "hold", "pass"] = Field(
        default="auto",
        description="A streamed answer that does not open with the start token: 'auto' holds it while the model's "
        "answers have not shown how it reasons (see the module docstring), 'hold' it until the end token "
        "or the end (never leaks a block the chat template opened; the answer arrives at once), or 'pass' it "
        "through as it streams (for models that always write the start token, or none at all)")


@register_for_adapter(name="reasoning", description="Strips <think> reasoning from answers and counts it.")
class ReasoningInterceptor(BaseInterceptor[ReasoningParams], PersistedStats):
    Params = ReasoningParams
    stats_section = "reasoning"

    def __init__(self, params: ReasoningParams, run: RunContext) -> None:
        super().__init__(params, run)
        self.stats = ReasoningStats()
        self._tracking = params.enable_reasoning_tracking and params.add_reasoning
        self.dir = run.resolve(params.cache_dir or run.output_dir / "reasoning_stats")
        self.earlier = ReasoningStats()
        self.count_replays = True
        self.models: dict[str, str] = {}
        """What each model (by name) has shown of how it reasons, for ``stream_unmarked: auto``: ``template`` (its
        chat template opens the block: its streams are held), ``plain`` (it writes its own start token, or gave
        plain answers: its streams pass as they come), absent while undecided. Learned per interceptor from this
        run's answers (:meth:`learn`), kept with the run's statistics (``models`` in the per-run file under
        ``cache_dir``) and read back at start from earlier runs of the same output dir, so a resumed run streams a
        known model at once; a ``template`` seen once holds for good. Nothing is shared between runs that do not
        share that directory."""
        self._plain_seen: dict[str, int] = {}
        if self._tracking:
            self.earlier, n = self._load_earlier()
            self.count_replays = n == 0
            run.statistics.persist(self)

    def _load_earlier(self) -> tuple[ReasoningStats, int]:
        """Earlier runs' numbers, and what their answers showed of each model (a resumed run streams at once)."""
        total = ReasoningStats()
        runs = load_run_files([self.dir], lambda data: (ReasoningStats.load(data), data.get("models")),
                              skip=self.run.run_id)
        for stats, models in runs:
            total = total.merge(stats)
            for model, shown in models.items() if isinstance(models, dict) else ():
                if shown == _TEMPLATE or (shown == _PLAIN and model not in self.models):
                    self.models[model] = shown  # a template seen once holds the model's streams for good
        return total, len(runs)

    @classmethod
    def merged_section(cls, params: ReasoningParams, output_dirs: list[Path]) -> dict[str, Any] | None:
        """The section of several proxies' statistics (workers, proxies on other machines): the per-run files each
        wrote in its output dir, added up."""
        runs = load_run_files([run_files_dir(params.cache_dir, where, "reasoning_stats") for where in output_dirs],
                              ReasoningStats.load)
        total = ReasoningStats()
        for stats in runs:
            total = total.merge(stats)
        return total.section() if runs else None

    def snapshot(self) -> _Snapshot:
        """This run's numbers now (on the loop: a few counters and the models map copied)."""
        return _Snapshot(self.dir / f"run-{self.run.run_id}.json", self.earlier, self.stats.copy(), self.models.copy())

    def section(self) -> dict[str, Any]:
        """Every run in the statistics dir, as it is now (writes nothing)."""
        return self.snapshot().section()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        p = self.params
        if not resp.ok:
            return resp
        if p.add_reasoning:
            counted = self._tracking and (self.count_replays or not ctx.state.get(CACHE_HIT, False))
            return await handle(resp, _Strip(self, ctx, counted))
        if p.migrate_reasoning_content:
            return await handle(resp, _Unmigrate(p.start_reasoning_token or "", p.end_reasoning_token))
        return resp

    def hold_unmarked(self, model: str) -> bool:
        """Whether a streamed answer of ``model`` that does not open with the start token is held (``auto``: while
        its answers have not shown how the model reasons)."""
        mode = self.params.stream_unmarked
        if mode != "auto":
            return mode == "hold"
        return self.models.get(model, _UNDECIDED) != _PLAIN

    def learn(self, model: str, splitter: StreamSplitter, finish_reason: Any) -> None:
        """What one finished choice shows of its model: a block only closed (the template opens it: hold for good),
        one the model opened itself, or a whole answer with no block at all."""
        known = self.models.get(model, _UNDECIDED)
        if known == _TEMPLATE:
            return
        if not splitter.opened and (splitter.finished or self.params.end_reasoning_token in "".join(splitter.original)):
            # Closed a block its template opened; or, streamed as it came (the model was taken for plain), its text
            # holds the end token all the same: the reasoning went out this once, never again.
            self.models[model] = _TEMPLATE
        elif splitter.opened:
            self.models[model] = _PLAIN  # it writes its own start token: an answer without one has no reasoning
        elif finish_reason == "stop" and not splitter.started and known != _PLAIN:
            # Plain answers that ended normally (a cut-off one may be all reasoning): enough of them decide.
            self._plain_seen[model] = seen = self._plain_seen.get(model, 0) + 1
            if seen >= PLAIN_ANSWERS_TO_DECIDE:
                self.models[model] = _PLAIN
        if len(self.models) > MAX_MODELS:  # bounded: a harness uses a handful of model names
            self.models.pop(next(iter(self.models)))

    def track(self, original: str, split: Split, server_reasoning: str | None, usage: Any) -> None:
        self.stats.add(original, split, server_reasoning, usage)
        self.run.statistics.touch()
        n = self.params.logging_aggregated_stats_interval
        if n and self.stats.total % n == 0:
            log.info("reasoning: %s", self.stats.section())


_UNDECIDED, _TEMPLATE, _PLAIN = "undecided", "template", "plain"
PLAIN_ANSWERS_TO_DECIDE = 3
"""Answers without any reasoning block, ended by ``stop``, after which a model's streams pass as they arrive."""
MAX_MODELS = 256


class _Choice:
    """One choice of an answer: its splitter, what the server sent as reasoning_content, and how it ended."""

    __slots__ = ("counted", "finish_reason", "learned", "server_reasoning", "splitter")

    def __init__(self, splitter: StreamSplitter) -> None:
        self.splitter = splitter
        self.server_reasoning: list[str] = []
        self.counted = False
        self.learned = False
        self.finish_reason: Any = None


class _Strip(AnswerHandler):
    """Strips reasoning from one answer's choices (whole or streamed) and counts it."""

    def __init__(self, ic: ReasoningInterceptor, ctx: RequestContext, counted: bool) -> None:
        self.ic, self.ctx, self.counted = ic, ctx, counted
        self.p = ic.params
        self.choices: dict[int, _Choice] = {}
        self.template: dict[str, Any] = {}
        """What extra events sent at a stream's end are made of."""
        self.whole = False
        """A whole answer with choices was seen: on_object closed and counted it."""
        self.usage: Any = None
        body = ctx.json
        model = body.get("model") if body is not None else None
        self.model = model if isinstance(model, str) else ""

    def choice(self, i: int, whole: bool) -> _Choice:
        c = self.choices.get(i)
        if c is None:
            p = self.p
            # A whole answer is split at the end token whether or not it opened with the start token.
            hold = whole or self.ic.hold_unmarked(self.model)
            c = self.choices[i] = _Choice(StreamSplitter(p.start_reasoning_token, p.end_reasoning_token,
                                                         p.include_if_not_finished, hold))
        return c

    def on_object(self, obj: dict[str, Any], whole: bool) -> bool:
        if obj.get("usage"):
            self.usage = obj["usage"]  # a stream's usage chunk comes after finish_reason: counted at the end
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return False
        if whole:
            self.whole = True
        elif not self.template:
            self.template = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        changed = False
        for pos, ch in enumerate(choices):
            if not isinstance(ch, dict):
                continue
            i = ch.get("index", pos)  # an answer may leave out the index (NeMo's tests do): its place in the list
            if not isinstance(i, int):
                i = pos
            c = self.choices.get(i) or self.choice(i, whole)
            part = ch.get("message") if whole else ch.get("delta")
            if isinstance(part, dict):
                if part.get("role") not in (None, "assistant"):
                    continue  # as NeMo Evaluator: only the assistant's own text is reasoning
                holder, key = part, "content"
                rc = part.get("reasoning_content")
                if isinstance(rc, str):
                    c.server_reasoning.append(rc)
            else:
                holder, key = ch, "text"
            text = holder.get(key)
            finish_reason = ch.get("finish_reason")
            if finish_reason:
                c.finish_reason = finish_reason
            thought = ""
            if whole:
                out = c.splitter.take_whole(text if isinstance(text, str) else "")
            else:
                out, thought = c.splitter.feed(text) if isinstance(text, str) and text else ("", "")
                if finish_reason:
                    out += c.splitter.close()
            if (isinstance(text, str) and out != text) or (not isinstance(text, str) and out):
                holder[key] = out
                changed = True
            if self.p.migrate_reasoning_content and isinstance(part, dict) and not c.server_reasoning:
                reasoning = c.splitter.result().reasoning if whole else thought
                if reasoning:
                    part["reasoning_content"] = reasoning
                    changed = True
        if whole:
            self._count()
        return changed

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        if self.whole:  # closed and counted as it was seen
            return []
        extras = []
        if events is not None or self.template:
            for i in sorted(self.choices):
                tail = self.choices[i].splitter.close()
                if tail:  # a stream that ended without finish_reason: still give the client what it is owed
                    ch: dict[str, Any] = {"index": i, "finish_reason": None}
                    if self.template.get("object") == "text_completion":
                        ch["text"] = tail
                    else:
                        ch["delta"] = {"content": tail}
                    extras.append({**self.template, "choices": [ch]})
        self._count()
        return extras

    def _count(self) -> None:
        for c in self.choices.values():
            if not c.learned:
                c.learned = True
                self.ic.learn(self.model, c.splitter, c.finish_reason)
        if not self.counted:
            return
        usage = self.usage
        for i in sorted(self.choices):
            c = self.choices[i]
            if not c.counted:
                c.counted = True
                s = c.splitter
                self.ic.track("".join(s.original), s.result(), "".join(c.server_reasoning) or None, usage)
                usage = None  # the response's token counts are counted once, with its first choice


class _Unmigrate(AnswerHandler):
    """NeMo Evaluator's migration with add_reasoning off: reasoning_content goes back into content between the
    tokens (a whole answer keeps its reasoning_content; a stream's deltas lose it, since their content carries it)."""

    def __init__(self, start: str, end: str) -> None:
        self.start, self.end = start, end
        self.state: dict[Any, str] = {}  # choice index -> "open" (start token sent) or "closed" (end token sent)

    def on_object(self, obj: dict[str, Any], whole: bool) -> bool:
        changed = False
        for ch in obj.get("choices") or ():
            part = ch.get("message" if whole else "delta") if isinstance(ch, dict) else None
            if not isinstance(part, dict) or ("reasoning_content" not in part and not self.state):
                continue
            i = ch.get("index", 0)
            st = self.state.get(i)
            rc = part.get("reasoning_content") if whole else part.pop("reasoning_content", None)
            changed = changed or (rc is not None and not whole)
            content = part.get("content")
            text = ""
            if isinstance(rc, str) and (rc.strip() if whole else rc):
                text = (self.start if st is None else "") + rc
                st = st or "open"
            if st == "open" and (whole or (isinstance(content, str) and content) or ch.get("finish_reason")):
                text += self.end
                st = "closed"
            if st is not None and not whole:
                self.state[i] = st
            if text:
                part["content"] = text + (content if isinstance(content, str) else "")
                changed = True
        return changed
