"""Reasoning in an answer's text: where it is and what is left once it is taken out.

Shared by the ``reasoning`` interceptor (which strips) and the report (which shows the reasoning apart).
"""

from __future__ import annotations

from dataclasses import dataclass


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
    return Split(content)
