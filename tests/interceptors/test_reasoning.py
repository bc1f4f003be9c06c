"""reasoning: stripping whole answers and streams split anywhere, unfinished blocks, migration, statistics."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.shape import split_reasoning
from evalproxy.adapter.flow.sse import DONE_EVENT, Event, event_json, make_event
from evalproxy.adapter.server.output import STATISTICS_FILE, StatisticsFile
from evalproxy.interceptors.reasoning import (
    ReasoningInterceptor,
    ReasoningStats,
    StreamSplitter,
    count_words,
    usage_tokens,
)

THINK = "<think>let me add two and two</think>\n\nThe answer is 4."
ANSWER = "The answer is 4."
REASONING = "let me add two and two"

# Answers covering every mode of the stream state machine.
CONTENTS = [
    THINK,
    "no start token</think> 4",
    "  <think>x</think>  y",
    "plain answer",
    "",
    "   ",
    "<th",
    "<think>unfinished thought",
    "a<think>b</think>c",
    "<think>a</think>b</think>c",
    "<think></think>z",
    "x </thin",
    "<think>\nthe end token is at the very end</think>",
]


def make(run: RunContext, **params: Any) -> ReasoningInterceptor:
    return ReasoningInterceptor(ReasoningInterceptor.Params(**params), run)


def feed_all(s: StreamSplitter, pieces: list[str]) -> tuple[str, str]:
    out, thought = "", ""
    for p in pieces:
        o, t = s.feed(p)
        out, thought = out + o, thought + t
    return out + s.close(), thought


class TestStreamSplitter:
    @pytest.mark.parametrize("content", CONTENTS)
    @pytest.mark.parametrize("start", ["<think>", None])
    @pytest.mark.parametrize("include", [True, False])
    def test_every_two_way_cut_matches_the_whole_answer(self, content: str, start: str | None, include: bool) -> None:
        """Cut anywhere into two events, the stream gives the same answer, reasoning and flags as the whole text."""
        whole = split_reasoning(content, start, "</think>", include)
        for cut in range(len(content) + 1):
            s = StreamSplitter(start, "</think>", include)
            out, _ = feed_all(s, [content[:cut], content[cut:]])
            got = s.result()
            assert (out, got.answer, got.reasoning, got.started, got.finished) == (
                whole.answer, whole.answer, whole.reasoning, whole.started, whole.finished), cut

    @pytest.mark.parametrize("content", CONTENTS)
    @pytest.mark.parametrize("start", ["<think>", None])
    @pytest.mark.parametrize("include", [True, False])
    def test_a_whole_text_at_once_ends_as_feed_and_close_do(self, content: str, start: str | None,
                                                             include: bool) -> None:
        """take_whole emits what feeding the whole text and closing emit, and leaves the same result, original
        text and flags (a replayed whole answer is taken apart this way)."""
        fed = StreamSplitter(start, "</think>", include)
        out = (fed.feed(content)[0] if content else "") + fed.close()
        whole = StreamSplitter(start, "</think>", include)
        assert whole.take_whole(content) == out
        assert (whole.result(), whole.original, whole.opened, whole.close()) == (
            fed.result(), fed.original, fed.opened, "")

    @pytest.mark.parametrize("content", CONTENTS)
    def test_character_by_character(self, content: str) -> None:
        """One character per event gives the same answer as the whole text."""
        s = StreamSplitter("<think>", "</think>", True)
        assert feed_all(s, list(content))[0] == split_reasoning(content, "<think>", "</think>").answer

    def test_only_a_possible_token_prefix_is_held_back(self) -> None:
        """Inside a block, reasoning is decided at once except for a tail that could start the end token."""
        s = StreamSplitter("<think>", "</think>", True)
        assert s.feed("<think>abc</th") == ("", "abc")
        assert s.pending == "</th"
        assert s.feed("ink>\n\nAns") == ("Ans", "")
        assert s.feed("wer") == ("wer", "")

    def test_answer_without_start_token_is_held_until_decided(self) -> None:
        """Text that does not open with the start token is held: it is reasoning if an end token follows."""
        s = StreamSplitter("<think>", "</think>", True)
        assert s.feed("I think") == ("", "")
        assert s.feed(" hard</think> 4") == ("4", "I think hard")

    def test_plain_answer_is_given_back_on_close(self) -> None:
        """A stream that never sends a token gets its whole text back when the choice ends."""
        s = StreamSplitter("<think>", "</think>", False)
        assert feed_all(s, ["Hello", " world"]) == ("Hello world", "")
        assert s.result().reasoning is None

    # 20 000 events of 1 000 characters: linear work is a fraction of a second; rebuilding the held text on every
    # event copies 200 GB (hours). The timeout is a hang guard, not a timing assertion.
    @pytest.mark.timeout(20)
    @pytest.mark.parametrize("start", ["<think>", None])
    @pytest.mark.parametrize("ends", [True, False], ids=["end-token", "plain"])
    def test_long_held_text_is_handled_in_linear_time(self, start: str | None, ends: bool) -> None:
        """Text held for 20 000 events before the end token (or the end) comes back exactly stripped."""
        s = StreamSplitter(start, "</think>", True)
        piece = "thinking about it, " * 50 + "</thin"  # a piece of the end token at the end of every event
        pieces = [piece] * 20_000 + (["k>\n\nFour."] if ends else [" done."])
        out, thought = feed_all(s, pieces)
        if ends:
            assert (out, thought) == ("Four.", (piece * 20_000)[: -len("</thin")])
        else:
            assert out == piece * 20_000 + " done." and thought == ""

    @pytest.mark.parametrize("end", ["</think>", "|"])
    def test_held_text_every_three_way_cut(self, end: str) -> None:
        """Text held without a start token, cut anywhere into three events, splits as the whole text does."""
        content = f"  abc{end[:-1]}x{end}  answer{end}z"
        whole = split_reasoning(content, "<think>", end)
        for a in range(len(content) + 1):
            for b in range(a, len(content) + 1):
                s = StreamSplitter("<think>", end, True)
                out, thought = feed_all(s, [content[:a], content[a:b], content[b:]])
                assert (out, thought) == (whole.answer, whole.reasoning), (a, b)

    @pytest.mark.timeout(20)  # a hang guard, as above
    def test_long_leading_whitespace_is_handled_in_linear_time(self) -> None:
        """Whitespace held for 20 000 events before the start token is decided comes back exactly, or is dropped
        before a block."""
        for last, expected in (("<think>x</think>A", "A"), ("plain", " " * 20_000_000 + "plain")):
            s = StreamSplitter("<think>", "</think>", True)
            assert feed_all(s, [" " * 1000] * 20_000 + [last])[0] == expected


def chat_chunk(content: str | None, finish: str | None = None, index: int = 0, **delta: Any) -> dict[str, Any]:
    d: dict[str, Any] = {} if content is None else {"content": content}
    d.update(delta)
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": d, "finish_reason": finish}]}


USAGE = {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13,
         "completion_tokens_details": {"reasoning_tokens": 6}}


async def through(ic: ReasoningInterceptor, resp: ProxyResponse, path: str = "/v1/chat/completions") -> ProxyResponse:
    async def call_next(ctx: RequestContext) -> ProxyResponse:
        return resp

    return await ic(RequestContext(method="POST", path=path, json={}), call_next)


async def stream_through(ic: ReasoningInterceptor, events: list[bytes]) -> list[bytes]:
    async def gen() -> AsyncIterator[Event]:
        for e in events:
            yield Event(e)

    resp = await through(ic, ProxyResponse(200, stream=gen()))
    assert resp.stream is not None
    return [e.raw async for e in resp.stream]


def content_events(pieces: list[str], usage: dict[str, Any] | None = None) -> list[bytes]:
    events = [make_event(chat_chunk("", role="assistant"))]
    events += [make_event(chat_chunk(p)) for p in pieces]
    events.append(make_event(chat_chunk(None, "stop")))
    if usage is not None:
        events.append(make_event({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    return [*events, DONE_EVENT]


def joined(events: list[bytes], field: str = "content") -> str:
    text = ""
    for e in events:
        obj = event_json(e)
        for ch in (obj or {}).get("choices", []):
            text += ch.get("delta", {}).get(field) or ch.get("text") or ""
    return text


def json_answer(content: str, **message: Any) -> ProxyResponse:
    return ProxyResponse.from_json({"id": "x", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": "stop"}],
        "usage": USAGE})


class TestWholeAnswers:
    async def test_chat_content_is_stripped(self, run: RunContext) -> None:
        """A chat answer loses its reasoning; the rest of the body is unchanged."""
        resp = await through(make(run), json_answer(THINK))
        assert resp.json == {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                                                     "finish_reason": "stop"}], "usage": USAGE}
        assert orjson.loads(resp.body or b"") == resp.json

    async def test_completions_text_is_stripped(self, run: RunContext) -> None:
        """Every choice's text of a completions answer loses its reasoning."""
        body = {"choices": [{"index": 0, "text": THINK}, {"index": 1, "text": "r</think>b"}]}
        resp = await through(make(run), ProxyResponse.from_json(body), "/v1/completions")
        assert [c["text"] for c in resp.json["choices"]] == [ANSWER, "b"]

    async def test_every_choice_is_stripped_without_indexes(self, run: RunContext) -> None:
        """n > 1 choices that carry no index (as NeMo Evaluator's own tests send them) are each stripped, not only
        the first (issue 21)."""
        body = {"choices": [{"message": {"role": "assistant", "content": f"<think>Reasoning {k}</think>Answer {k}"}}
                            for k in (1, 2)]}
        resp = await through(make(run), ProxyResponse.from_json(body))
        assert [c["message"]["content"] for c in resp.json["choices"]] == ["Answer 1", "Answer 2"]

    async def test_untouched_answer_keeps_its_bytes(self, run: RunContext) -> None:
        """An answer without reasoning keeps the upstream's exact bytes."""
        raw = b'{"choices": [{"index": 0, "message": {"content": "4"}}],   "z": 1}'
        resp = await through(make(run), ProxyResponse(200, body=raw))
        assert resp.body == raw

    @pytest.mark.parametrize(("include", "expected"), [(True, "<think>unfinished"), (False, "")])
    async def test_unfinished(self, run: RunContext, include: bool, expected: str) -> None:
        """An unfinished block is kept whole with include_if_not_finished, blanked without."""
        resp = await through(make(run, include_if_not_finished=include), json_answer("<think>unfinished"))
        assert resp.json["choices"][0]["message"]["content"] == expected

    async def test_no_reasoning_is_never_blanked(self, run: RunContext) -> None:
        """Dropping unfinished blocks never blanks an answer that has no reasoning tokens."""
        resp = await through(make(run, include_if_not_finished=False), json_answer("just 4"))
        assert resp.json["choices"][0]["message"]["content"] == "just 4"

    async def test_migrate_moves_reasoning(self, run: RunContext) -> None:
        """migrate_reasoning_content puts the stripped text in reasoning_content."""
        resp = await through(make(run, migrate_reasoning_content=True), json_answer(THINK))
        assert resp.json["choices"][0]["message"] == {"role": "assistant", "content": ANSWER,
                                                      "reasoning_content": REASONING}

    @pytest.mark.parametrize("migrate", [False, True])
    async def test_existing_reasoning_content_is_untouched(self, run: RunContext, migrate: bool) -> None:
        """A server-provided reasoning_content stays as it is, whether or not migration is on."""
        ic = make(run, migrate_reasoning_content=migrate)
        resp = await through(ic, json_answer("late</think>4", reasoning_content="two plus two"))
        assert resp.json["choices"][0]["message"] == {"role": "assistant", "content": "4",
                                                      "reasoning_content": "two plus two"}
        assert ic.stats.section()["responses_with_reasoning"] == 1

    async def test_add_reasoning_off_passes_answers_untouched(self, run: RunContext) -> None:
        """With add_reasoning off the answer keeps its reasoning and nothing is counted."""
        ic = make(run, add_reasoning=False)
        resp = await through(ic, json_answer(THINK))
        assert resp.json["choices"][0]["message"]["content"] == THINK
        assert ic.stats.total == 0

    async def test_add_reasoning_off_with_migrate_moves_reasoning_content_into_content(self, run: RunContext) -> None:
        """NeMo Evaluator's migration: reasoning_content goes back into content between the tokens."""
        resp = await through(make(run, add_reasoning=False, migrate_reasoning_content=True),
                             json_answer("4", reasoning_content="two plus two"))
        assert resp.json["choices"][0]["message"]["content"] == "<think>two plus two</think>4"

    def test_nemo_evaluator_params_validate(self) -> None:
        """Every field NeMo Evaluator's reasoning interceptor (and its legacy conversion) writes is accepted."""
        ReasoningInterceptor.Params(
            end_reasoning_token="</think>", start_reasoning_token=None, add_reasoning=True,
            migrate_reasoning_content=False, enable_reasoning_tracking=True, include_if_not_finished=True,
            stats_file_saving_interval=None, enable_caching=True, cache_dir="/tmp/reasoning_interceptor",
            logging_aggregated_stats_interval=100, save_individuals=True, log_level="INFO")


class TestStatistics:
    async def test_match_a_hand_count(self, run: RunContext) -> None:
        """Counts, word sums and token sums equal a hand count over four answers."""
        ic = make(run)
        contents = [THINK, "<think>unfinished thought", "no reasoning here", "opened by the template</think> ok"]
        for c in contents:
            await through(ic, json_answer(c))
        s = ic.stats.section()
        assert (s["total_responses"], s["responses_with_reasoning"], s["reasoning_started_count"],
                s["reasoning_finished_count"], s["reasoning_unfinished_count"]) == (4, 3, 3, 2, 1)
        assert s["reasoning_finished_ratio"] == round(2 / 3, 6)
        reasoning_words = 6 + 2 + 0 + 4
        assert (s["total_reasoning_words"], s["max_reasoning_words"]) == (reasoning_words, 6)
        assert s["avg_reasoning_words"] == round(reasoning_words / 4, 3)
        assert s["total_original_content_words"] == sum(len(c.split()) for c in contents)
        assert s["total_updated_content_words"] == 4 + 2 + 3 + 1
        assert (s["total_reasoning_tokens"], s["avg_reasoning_tokens"], s["max_reasoning_tokens"]) == (24, 6.0, 6)
        assert s["total_updated_content_tokens"] == 16
        assert s["description"] and isinstance(s["total_reasoning_tokens"], int)

    async def test_usage_is_counted_once_per_response(self, run: RunContext) -> None:
        """With several choices the response's token counts are added once, words once per choice."""
        ic = make(run)
        body = {"choices": [{"index": i, "message": {"content": THINK}} for i in range(3)], "usage": USAGE}
        await through(ic, ProxyResponse.from_json(body))
        s = ic.stats.section()
        assert (s["total_responses"], s["total_reasoning_words"], s["total_reasoning_tokens"]) == (3, 18, 6)

    def test_words_are_counted_as_split_counts_them(self) -> None:
        """count_words gives len(text.split()) for any text: every ASCII character, Unicode spaces and others."""
        rng = random.Random(7)
        alphabet = [chr(i) for i in range(128)] + ["\x85", "\xa0", "\u2003", "\u3000", "é", "\u2019"]
        texts = ["", " ", "a", " a ", "The answer is 42. " * 40]
        texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(20000)]
        assert [count_words(t) for t in texts] == [len(t.split()) for t in texts]

    @pytest.mark.parametrize(("usage", "expected"), [
        ({"completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 6}}, (6, 4)),
        ({"reasoning_tokens": 5, "content_tokens": 2}, (5, 2)),
        ({"output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 9}}, (9, 0)),
        ({"completion_tokens": 10}, (None, None)),
        (None, (None, None)),
    ])
    def test_usage_tokens(self, usage: Any, expected: tuple[int | None, int | None]) -> None:
        """Reasoning and answer tokens are read from each place servers report them."""
        assert usage_tokens(usage) == expected

    async def test_unknown_tokens_are_null_not_zero(self, run: RunContext) -> None:
        """Without token counts from the server, token averages are null rather than a made-up zero."""
        ic = make(run)
        await through(ic, ProxyResponse.from_json({"choices": [{"message": {"content": THINK}}]}))
        s = ic.stats.section()
        assert (s["avg_reasoning_tokens"], s["max_reasoning_tokens"], s["total_reasoning_tokens"]) == (None, None, 0)

    @pytest.mark.parametrize("params", [{"enable_reasoning_tracking": False}, {"add_reasoning": False}])
    async def test_no_section_without_tracking(self, run: RunContext, params: dict[str, Any]) -> None:
        """Without tracking there is no reasoning section in eval_factory_metrics.json."""
        await through(make(run, **params), json_answer(THINK))
        assert "reasoning" not in run.statistics.snapshot()

    async def test_the_file_gets_the_snapshot_not_later_counts(self, run: RunContext) -> None:
        """The writer persists and reports the numbers of the snapshot taken on the loop, not those counted after."""
        ic = make(run)
        await through(ic, json_answer(THINK))
        taken = run.statistics.snapshot()
        await through(ic, json_answer(THINK))
        await asyncio.to_thread(StatisticsFile(run.output_dir / STATISTICS_FILE, run.statistics).write_now, taken)
        section = orjson.loads((run.output_dir / STATISTICS_FILE).read_bytes())["reasoning"]
        persisted = orjson.loads((ic.dir / "run-test-run.json").read_bytes())
        assert (section["total_responses"], persisted["total"], ic.stats.total) == (1, 1, 2)

    def test_stats_round_trip_and_merge_by_field(self) -> None:
        """ReasoningStats reads back from its JSON as it was, and a merge adds every field."""
        s = ReasoningStats(total=4, with_reasoning=3, started=3, finished=2, unfinished=1)
        for i, summary in enumerate(s.words.values()):
            summary.add(i + 1)
        back = ReasoningStats.load(orjson.loads(orjson.dumps(s.dump())))
        assert back == s
        m = s.merge(back)
        assert (m.total, m.unfinished, m.words["reasoning_words"].total) == (8, 2, 2)


SPLIT_STREAM = "<think>weighing it</think>\n\nFour."


class TestStreams:
    @pytest.mark.parametrize("offset", range(len("</think>") + 1))
    @pytest.mark.parametrize("start", ["<think>", ""])
    async def test_end_token_split_at_every_offset(self, run: RunContext, offset: int, start: str) -> None:
        """However </think> is split across two events, the client's text is exactly the stripped answer."""
        ic = make(run)
        head = f"{start}weighing it"
        pieces = [head + "</think>"[:offset], "</think>"[offset:] + "\n\nFour", "."]
        out = await stream_through(ic, content_events(pieces))
        assert joined(out) == "Four."
        assert all(b"weigh" not in e and b"think>" not in e for e in out)
        assert out[-1] == DONE_EVENT

    async def test_events_without_content_change_pass_byte_for_byte(self, run: RunContext) -> None:
        """Role, finish, usage and [DONE] events reach the client exactly as they came; none is dropped."""
        events = content_events(["<think>x</think>", "Four."], usage=USAGE)
        out = await stream_through(make(run), events)
        assert len(out) == len(events)
        assert [out[i] for i in (0, 3, 4, 5)] == [events[i] for i in (0, 3, 4, 5)]

    async def test_plain_answer_arrives_whole_at_the_finish_event(self, run: RunContext) -> None:
        """A stream without a start token is held (it may end a block) and given back with finish_reason."""
        out = await stream_through(make(run), content_events(["Plain ", "answer."]))
        assert [joined([e]) for e in out] == ["", "", "", "Plain answer.", ""]
        assert event_json(out[3])["choices"][0]["finish_reason"] == "stop"

    async def test_stream_without_finish_or_done_is_flushed(self, run: RunContext) -> None:
        """A stream that ends without finish_reason or [DONE] still gives the client what it is owed."""
        events = [make_event(chat_chunk(p)) for p in ["Plain ", "answer."]]
        out = await stream_through(make(run), events)
        assert joined(out) == "Plain answer."

    async def test_completions_stream(self, run: RunContext) -> None:
        """Completions streams carry text on the choice; it is stripped the same way."""
        def ev(text: str | None, finish: str | None = None) -> bytes:
            ch: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if text is not None:
                ch["text"] = text
            return make_event({"id": "c", "object": "text_completion", "choices": [ch]})

        out = await stream_through(make(run), [ev("<think>hm</thi"), ev("nk> 4"), ev(None, "length"), DONE_EVENT])
        assert joined(out) == "4"

    async def test_choices_are_stripped_apart(self, run: RunContext) -> None:
        """Interleaved choices (n > 1) each have their own state."""
        events = [make_event(chat_chunk("<think>a", index=0)), make_event(chat_chunk("b</thi", index=1)),
                  make_event(chat_chunk("</think>A", index=0)), make_event(chat_chunk("nk>B", index=1)),
                  make_event(chat_chunk(None, "stop", index=0)), make_event(chat_chunk(None, "stop", index=1)),
                  DONE_EVENT]
        out = await stream_through(make(run), events)
        per: dict[int, str] = {0: "", 1: ""}
        for e in out:
            for ch in (event_json(e) or {}).get("choices", []):
                per[ch["index"]] += ch["delta"].get("content") or ""
        assert per == {0: "A", 1: "B"}

    @pytest.mark.parametrize("include", [True, False])
    async def test_unfinished_stream(self, run: RunContext, include: bool) -> None:
        """A stream that ends inside the block is given back whole, or not at all, as configured."""
        out = await stream_through(make(run, include_if_not_finished=include),
                                   content_events(["<think>never ", "ends"]))
        assert joined(out) == ("<think>never ends" if include else "")

    async def test_migrate_streams_reasoning_content(self, run: RunContext) -> None:
        """With migration the reasoning reaches the client as reasoning_content deltas, the answer as content."""
        out = await stream_through(make(run, migrate_reasoning_content=True),
                                   content_events(["<think>weigh", "ing it</th", "ink>\n\nFour."]))
        assert (joined(out), joined(out, "reasoning_content")) == ("Four.", "weighing it")

    async def test_server_reasoning_content_deltas_are_untouched(self, run: RunContext) -> None:
        """reasoning_content deltas from the server pass as they are, and count as reasoning."""
        ic = make(run, migrate_reasoning_content=True)
        events = [make_event(chat_chunk(None, reasoning_content="two plus")),
                  make_event(chat_chunk(None, reasoning_content=" two")), make_event(chat_chunk("4")),
                  make_event(chat_chunk(None, "stop")), DONE_EVENT]
        out = await stream_through(ic, events)
        assert out[:2] == events[:2]
        assert (joined(out), joined(out, "reasoning_content")) == ("4", "two plus two")
        s = ic.stats.section()
        assert (s["responses_with_reasoning"], s["reasoning_finished_count"], s["total_reasoning_words"]) == (1, 1, 3)

    async def test_add_reasoning_off_with_migrate_streams_reasoning_into_content(self, run: RunContext) -> None:
        """NeMo Evaluator's migration on a stream: reasoning_content deltas become content between the tokens."""
        events = [make_event(chat_chunk(None, reasoning_content="two plus")),
                  make_event(chat_chunk(None, reasoning_content=" two")), make_event(chat_chunk("4")),
                  make_event(chat_chunk(None, "stop")), DONE_EVENT]
        out = await stream_through(make(run, add_reasoning=False, migrate_reasoning_content=True), events)
        assert (joined(out), joined(out, "reasoning_content")) == ("<think>two plus two</think>4", "")

    async def test_statistics_use_the_usage_that_follows_finish(self, run: RunContext) -> None:
        """A stream is counted at its end, so the usage chunk after finish_reason supplies its token counts."""
        ic = make(run)
        await stream_through(ic, content_events(["<think>weighing it</think>", "Four."], usage=USAGE))
        s = ic.stats.section()
        assert (s["total_responses"], s["reasoning_finished_count"], s["total_reasoning_words"]) == (1, 1, 2)
        assert (s["total_original_content_words"], s["total_updated_content_words"]) == (2, 1)  # split on whitespace
        assert (s["total_reasoning_tokens"], s["total_updated_content_tokens"]) == (6, 4)


class TestLongStreams:
    @pytest.mark.timeout(10)  # a hang guard: held text rebuilt on every event takes a minute or more here
    @pytest.mark.loop_may_block  # 24,000 events pass through the interceptor in this very loop, on purpose
    async def test_many_events_before_the_end_token(self, run: RunContext) -> None:
        """A stream of 24 000 events of 1 KB before the end token reaches the client exactly stripped."""
        pieces = ["weighing it " * 85] * 24_000 + ["</think>\n\nFour."]
        out = await stream_through(make(run), content_events(pieces))
        assert joined(out) == "Four." and out[-1] == DONE_EVENT


class TestStreamUnmarkedPass:
    def test_pass_streams_plain_answers_at_once(self) -> None:
        """stream_unmarked: pass lets an answer without the start token through as it arrives."""
        held = StreamSplitter("<think>", "</think>", True)
        passing = StreamSplitter("<think>", "</think>", True, hold_unmarked=False)
        assert held.feed("Hello")[0] == "" and held.close() == "Hello"
        assert passing.feed("Hello")[0] == "Hello" and passing.feed(" world")[0] == " world"

    def test_pass_still_strips_marked_blocks(self) -> None:
        """With pass, an answer that opens with the start token is still stripped."""
        s = StreamSplitter("<think>", "</think>", True, hold_unmarked=False)
        out = s.feed("<think>hmm</thi")[0] + s.feed("nk> 4")[0] + s.close()
        assert out == "4"
