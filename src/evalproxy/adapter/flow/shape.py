"""The shape of an answer, read one way everywhere: a stream assembled into one answer, its first choice, its usage,
the text of a message or choice, its tool calls, and reasoning split from an answer's text.

Interceptors (streaming, caching, reasoning, the dumps and logs), hooks (the report) and records (compare) all read
answers through these functions, so a stream's tool calls look the same wherever they are shown: merged by
``index``, their ``arguments`` joined, their ``function.name`` kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from evalproxy.adapter.flow.sse import Event, event_json

# ------------------------------------------------------------------------------------------------- a stream, whole

_Add = Callable[[tuple[int, ...], dict[str, Any], str, str], None]


def assemble_stream(events: Iterable[bytes | Event | Mapping[str, Any]]) -> dict[str, Any] | None:
    """One ``chat.completion`` (or ``text_completion``) object from a stream's events (their bytes, the events or
    their parsed objects), or None when no event holds a JSON object.

    id, created and model come from the first object; per choice the content and the reasoning
    (``reasoning_content`` or ``reasoning``, kept as ``reasoning_content``) are joined, tool calls merged by their
    ``index`` (``arguments`` joined, the first ``function.name`` kept, the last ``id``), the last finish reason; the
    last usage. Texts are kept in pieces and joined once at the end: time linear in the stream's length."""
    out: dict[str, Any] | None = None
    text_kind = False
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    # Where each text goes (a dict and its key) and its pieces so far.
    texts: dict[tuple[int, ...], tuple[dict[str, Any], str, list[str]]] = {}

    def add(key: tuple[int, ...], holder: dict[str, Any], name: str, text: str) -> None:
        entry = texts.get(key)
        if entry is None:
            holder.setdefault(name, "")  # its place among the keys, filled at the end
            texts[key] = (holder, name, [text])
        else:
            entry[2].append(text)

    for event in events:
        obj = event.json if isinstance(event, Event) else event if isinstance(event, Mapping) else event_json(event)
        if not isinstance(obj, Mapping):
            continue
        if out is None:
            text_kind = obj.get("object") == "text_completion"
            out = {"id": obj.get("id"), "object": "text_completion" if text_kind else "chat.completion",
                   "created": obj.get("created"), "model": obj.get("model")}
        for ch in obj.get("choices") or ():
            if isinstance(ch, Mapping):
                _merge_choice(choices, calls, ch, text_kind, add)
        if obj.get("usage"):
            out["usage"] = obj["usage"]
    if out is None:
        return None
    for holder, name, pieces in texts.values():
        holder[name] = "".join(pieces)
    for i, by_index in calls.items():
        choices[i].setdefault("message", {"role": "assistant"})["tool_calls"] = [by_index[k] for k in sorted(by_index)]
    out["choices"] = [choices[i] for i in sorted(choices)]
    return out


def _merge_choice(choices: dict[int, dict[str, Any]], calls: dict[int, dict[int, dict[str, Any]]],
                  ch: Mapping[str, Any], text_kind: bool, add: _Add) -> None:
    """Fold one choice of an event into the choice of its ``index`` (and its tool calls into ``calls``)."""
    i = ch.get("index", 0)
    delta = ch.get("delta")
    if not text_kind and isinstance(delta, Mapping):
        c = choices.setdefault(i, {"index": i, "message": {"role": "assistant", "content": ""}, "finish_reason": None})
        msg = c["message"]
        if isinstance(delta.get("content"), str):
            add((i, 1), msg, "content", delta["content"])
        thought = delta.get("reasoning_content", delta.get("reasoning"))
        if isinstance(thought, str):
            add((i, 2), msg, "reasoning_content", thought)
        for tc in delta.get("tool_calls") or ():
            if isinstance(tc, Mapping):
                _merge_call(calls.setdefault(i, {}), tc, i, add)
    elif text_kind or isinstance(ch.get("text"), str):
        c = choices.setdefault(i, {"index": i, "text": "", "finish_reason": None})
        if isinstance(ch.get("text"), str):
            add((i, 0), c, "text", ch["text"])
    else:
        c = choices.setdefault(i, {"index": i, "finish_reason": None})
    if ch.get("finish_reason"):
        c["finish_reason"] = ch["finish_reason"]


def _merge_call(slots: dict[int, dict[str, Any]], tc: Mapping[str, Any], choice: int, add: _Add) -> None:
    """Fold one tool-call delta into the call of its ``index``."""
    k = tc.get("index", 0)
    slot = slots.get(k)
    if slot is None:
        slot = slots[k] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
    if tc.get("id"):
        slot["id"] = tc["id"]
    if tc.get("type"):
        slot["type"] = tc["type"]
    fn = tc.get("function")
    if not isinstance(fn, Mapping):
        return
    name = fn.get("name")
    if isinstance(name, str) and name and not slot["function"]["name"]:
        slot["function"]["name"] = name  # sent once, in the call's first delta; a server that repeats it is not doubled
    if isinstance(fn.get("arguments"), str):
        add((choice, 4, k), slot["function"], "arguments", fn["arguments"])


def empty_answer() -> dict[str, Any]:
    """The answer a stream with no JSON object in it assembles to."""
    return {"id": None, "object": "chat.completion", "created": None, "model": None, "choices": []}


# ----------------------------------------------------------------------------------------------- reading an answer


def first_choice(answer: Any) -> dict[str, Any] | None:
    """The answer's first choice, or None."""
    choices = answer.get("choices") if isinstance(answer, Mapping) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def usage_of(answer: Any) -> dict[str, Any] | None:
    """The answer's ``usage`` object, or None."""
    usage = answer.get("usage") if isinstance(answer, Mapping) else None
    return usage if isinstance(usage, dict) else None


def message_of(choice: Any) -> dict[str, Any] | None:
    """A choice's ``message`` (whole answers) or ``delta`` (stream events), or None (a text completion)."""
    if not isinstance(choice, Mapping):
        return None
    msg = choice.get("message", choice.get("delta"))
    return msg if isinstance(msg, dict) else None


def content_text(content: Any, sep: str = "", *, other_parts: bool = False) -> str:
    """The text of a message's ``content``: the string, or the text parts of a list joined by ``sep``.

    ``other_parts``: parts that are not text (images, audio) stand as ``[their type]``, for a reader."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for p in content:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                texts.append(p["text"])
            elif other_parts and isinstance(p, dict):
                texts.append(f"[{p.get('type')}]")
        return sep.join(texts)
    return ""


def tool_calls(choice: Any) -> list[dict[str, Any]]:
    """The tool calls of a choice's message (whole ones, as :func:`assemble_stream` makes them), or []."""
    msg = message_of(choice)
    calls = msg.get("tool_calls") if msg is not None else None
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def tool_call_text(call: Mapping[str, Any]) -> str:
    """One tool call as ``name(arguments)``."""
    fn = call.get("function")
    fn = fn if isinstance(fn, Mapping) else {}
    args = fn.get("arguments")
    return f"{fn.get('name')}({args if isinstance(args, str) else orjson.dumps(args).decode()})"


def answer_text(answer: Any) -> str | None:
    """What an answer says, for comparing answers: its first choice's text, then each of its tool calls as
    ``name(arguments)`` on a line of its own (ids left out: they differ from run to run); a Responses answer's
    ``output_text``. None for anything else."""
    choice = first_choice(answer)
    if choice is not None:
        msg = message_of(choice)
        content = msg.get("content") if msg is not None else choice.get("text")
        calls = [tool_call_text(c) for c in tool_calls(choice)]
        if not calls:
            return content if isinstance(content, str) else None
        return "\n".join([content, *calls] if isinstance(content, str) and content else calls)
    text = answer.get("output_text") if isinstance(answer, Mapping) else None
    return text if isinstance(text, str) else None


# ------------------------------------------------------------------------------------------------------ reasoning


@dataclass
class Split:
    """One answer's content taken apart."""

    answer: str
    reasoning: str | None = None
    started: bool = False
    finished: bool = False


def split_reasoning(content: str, start: str | None, end: str, include_if_not_finished: bool = True) -> Split:
    """Separate reasoning from the answer in a whole content string."""
    i = content.find(end)
    if i >= 0:
        reasoning = content[:i]
        head = reasoning.lstrip()
        if start and head.startswith(start):
            reasoning = head[len(start) :]
        return Split(content[i + len(end) :].lstrip(), reasoning, started=True, finished=True)
    if start and content.lstrip().startswith(start):
        reasoning = content.lstrip()[len(start) :]
        return Split(content if include_if_not_finished else "", reasoning, started=True, finished=False)
    if not start and not include_if_not_finished:
        # No start token means every answer opens inside the block: without the end token it is unfinished.
        return Split("", content, started=True, finished=False)
    return Split(content)
