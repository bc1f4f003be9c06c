"""Reasoning in an answer's text as it streams. The whole-text splitter (:func:`split_reasoning`, its result a
:class:`Split`) lives in :mod:`evalproxy.adapter.flow.shape`, where the report uses it too."""

from __future__ import annotations

from dataclasses import dataclass, field

from evalproxy.adapter.flow.shape import Split, split_reasoning


def _held_back(text: str, token: str) -> int:
    """Length of the longest end of ``text`` that could be the beginning of ``token``."""
    for k in range(min(len(token) - 1, len(text)), 0, -1):
        if token.startswith(text[-k:]):
            return k
    return 0


@dataclass
class StreamSplitter:
    """Per-choice state machine for streamed content; its result equals
    :func:`~evalproxy.adapter.flow.shape.split_reasoning` on the whole text.

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
    """Text not decided yet, short: a piece of the start token (``detect``) or of the end token (``marked``)."""
    lead: list[str] = field(default_factory=list)
    """``detect``: the whitespace before the start token, in pieces (it may be long; joined once, when decided)."""
    held: list[str] = field(default_factory=list)
    """``unmarked``: the text held until the end token or the end, in pieces (joined once: linear in its length)."""
    tail: str = ""
    """``unmarked``: the last ``len(end) - 1`` characters held, where an end token split across events begins."""
    reasoning: list[str] = field(default_factory=list)
    original: list[str] = field(default_factory=list)
    answer_parts: list[str] = field(default_factory=list)
    started: bool = False
    finished: bool = False
    closed: bool = False
    opened: bool = False
    """The answer opened with the start token itself (the model writes it; its template does not)."""

    def __post_init__(self) -> None:
        if not self.start:
            self.mode = "unmarked"

    def feed(self, text: str) -> tuple[str, str]:
        """(answer text to emit now, reasoning text decided now).

        Each character is looked at a bounded number of times however long the text held before a decision: only
        the new text (and the few characters before it where a split token may begin) is searched."""
        self.original.append(text)
        if self.mode == "answer":  # most of a long answer: nothing is held in this mode
            self.answer_parts.append(text)
            return text, ""
        at = 0  # where the end token may begin in ``buf``, in unmarked mode
        if self.mode == "unmarked" and self.held:
            probe = self.tail + text
            i = probe.find(self.end)
            if i < 0:
                self._hold(text, probe)
                return "", ""
            held = "".join(self.held)  # decided: everything held is joined once
            self.held, self.tail = [], ""
            buf, at = held + text, len(held) - (len(probe) - len(text)) + i
        else:
            buf, self.pending = self.pending + text, ""
        out, thought = self._decide(buf, at)
        if thought:
            self.reasoning.append(thought)
        self.answer_parts.append(out)
        return out, thought

    def _decide(self, buf: str, at: int) -> tuple[str, str]:
        """(answer, reasoning) of ``buf``, the text not decided before and the new text, moving through the modes as
        far as it allows; ``at``: where the end token may begin (unmarked mode), so text searched before is not."""
        out, thought = "", ""
        while True:
            if self.mode == "detect":
                assert self.start is not None
                head = buf.lstrip()  # ``buf`` begins with whitespace only if nothing but whitespace came before
                if head.startswith(self.start):
                    self.mode, self.started, self.opened = "marked", True, True
                    self.lead = []
                    buf = head[len(self.start) :]
                    continue
                if self.start.startswith(head):
                    if len(head) < len(buf):
                        self.lead.append(buf[: len(buf) - len(head)])
                    self.pending = head  # whitespace or a piece of the start token: not decidable yet
                    break
                if self.lead:
                    buf = "".join(self.lead) + buf
                    self.lead = []
                self.mode = "unmarked" if self.hold_unmarked else "answer"
                continue
            if self.mode in ("marked", "unmarked"):
                i = buf.find(self.end, at)
                if i >= 0:
                    thought += buf[:i]
                    self.started = self.finished = True
                    self.mode = "after_end"
                    buf = buf[i + len(self.end) :]
                    continue
                if self.mode == "unmarked":
                    # Models whose chat template opens the block in the prompt never send the start token, so
                    # anything may still turn out to be reasoning until the end token comes or the choice ends.
                    if buf:
                        self._hold(buf, buf)
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
        return out, thought

    def _hold(self, text: str, probe: str) -> None:
        """Hold ``text`` (unmarked mode); ``probe`` ends with it, after the tail held before."""
        self.held.append(text)
        k = len(self.end) - 1
        self.tail = probe[max(0, len(probe) - k) :] if k else ""

    def take_whole(self, text: str) -> str:
        """``feed(text)`` and then :meth:`close`, for a whole text: the text they would emit together, and the same
        state after them (what :meth:`result` gives, ``original``, ``opened``), found at once by
        :func:`~evalproxy.adapter.flow.shape.split_reasoning` instead of by the state machine (a replayed whole
        answer is taken apart on every request). A splitter that was fed or closed before goes the long way."""
        if self.original or self.closed or self.mode not in ("detect", "unmarked"):
            out = self.feed(text)[0] if text else ""
            return out + self.close()
        split = split_reasoning(text, self.start, self.end, self.include_if_not_finished)
        if text:
            self.original.append(text)
        self.opened = bool(self.start) and text.lstrip().startswith(self.start or "")
        self.started, self.finished = split.started, split.finished
        if split.reasoning is not None:
            self.reasoning.append(split.reasoning)
        self.answer_parts.append(split.answer)
        self.closed = True
        return split.answer

    def close(self) -> str:
        """The text still owed to the client when the choice ends."""
        if self.closed:
            return ""
        self.closed = True
        out = ""
        if self.mode == "unmarked" and not self.start and not self.include_if_not_finished:
            # No start token: every answer opens inside the block, so without the end token it is unfinished.
            self.reasoning.append("".join(self.held))
            self.started = True
        elif self.mode == "detect":
            out = "".join(self.lead) + self.pending  # no start token came: it was all answer
        elif self.mode == "unmarked":
            out = "".join(self.held)  # no end token came: it was all answer
        elif self.mode == "marked":  # unfinished block
            self.reasoning.append(self.pending)
            out = "".join(self.original) if self.include_if_not_finished else ""
        self.pending, self.lead, self.held, self.tail = "", [], [], ""
        self.answer_parts.append(out)
        return out

    def result(self) -> Split:
        return Split("".join(self.answer_parts), "".join(self.reasoning) if self.started else None,
                     started=self.started, finished=self.finished)
