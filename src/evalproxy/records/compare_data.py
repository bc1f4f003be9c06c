"""What ``evalproxy compare`` reads of runs beyond their records: each run's answers (the ledger says which cache key
and slot) and saved request bodies, read through the store interface from whatever store its caching used (its
cache dir, or a Redis server)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evalproxy.adapter.core.loads import MAX_DEPTH, too_deep
from evalproxy.adapter.flow.shape import answer_text
from evalproxy.records.explain import Failed
from evalproxy.records.observed import read_ledger
from evalproxy.storage import Store, is_url, open_store, run_store

log = logging.getLogger("evalproxy")  # the command line's logger: its lines read as they always have

READ_BATCH = 500
"""Answers asked of a store at once."""


async def stored_bodies(store: Store) -> list[dict[str, Any]]:
    """The request bodies a store saved (``save_requests``), in arrival order; damaged or too deep ones skipped."""
    bodies = []
    for p in await store.saved_pairs(with_responses=False):
        if not isinstance(p.request, dict) or p.damaged:
            continue
        if too_deep(p.request):
            log.warning("stored request %s/%s nests deeper than %d levels: skipped", p.run_id, p.request_id,
                        MAX_DEPTH)
            continue
        bodies.append(p.request)
    return bodies


async def failed_requests(store: Store) -> list[Failed]:
    """The requests whose answers failed (the store keeps the last ones for the report; errors are never cached)."""
    out = []
    for f in await store.failures():
        if isinstance(f.request, dict) and not f.damaged and not too_deep(f.request):
            out.append(Failed(f.path, f.request, f.status, f.error))
    return out


class RunStore:
    """What compare reads of one run's store: the answer text of each ledger entry (by prompt key), and the saved
    request bodies."""

    def __init__(self, answers: dict[str, str | None], bodies: list[dict[str, Any]]) -> None:
        self.answers, self.bodies = answers, bodies


async def read_run_store(run_dir: Path) -> RunStore:
    """One run's answers and saved requests; a run without a store gives none."""
    index, location = await asyncio.to_thread(ledger_and_store, run_dir)
    if location is None:
        return RunStore({}, [])
    store = await asyncio.to_thread(open_store, location)
    try:
        answers: dict[str, str | None] = {}
        keys = list(index)
        for i in range(0, len(keys), READ_BATCH):
            part = keys[i : i + READ_BATCH]
            stored = await store.get_answers([index[k] for k in part])
            answers.update((k, answer_text(a.json()) if a is not None else None)
                           for k, a in zip(part, stored, strict=True))
        return RunStore(answers, await stored_bodies(store))
    finally:
        await store.aclose()


def ledger_and_store(run_dir: Path) -> tuple[dict[str, tuple[str, int]], str | Path | None]:
    """A run's ledger as prompt key -> (cache key, slot), and its store (None: it has none)."""
    index: dict[str, tuple[str, int]] = {}
    for e in read_ledger(run_dir):
        if e.cache_key is not None and e.prompt_key not in index:
            index[e.prompt_key] = (e.cache_key, e.slot or 0)
    location = run_store(run_dir)
    if not is_url(location) and (location == run_dir or not Path(location).is_dir()):
        return index, None
    return index, location


class CachedAnswers:
    """``answers(run_dir, prompt_key)`` and ``bodies(run_dir)`` for compare: each run's store read once, through the
    store interface. Blocking: each run's first read runs its own event loop."""

    def __init__(self) -> None:
        self._runs: dict[Path, RunStore] = {}

    def run(self, run_dir: str | os.PathLike[str]) -> RunStore:
        d = Path(run_dir)
        if d not in self._runs:
            self._runs[d] = asyncio.run(read_run_store(d))
        return self._runs[d]

    def __call__(self, run_dir: str | os.PathLike[str], key: str) -> str | None:
        return self.run(run_dir).answers.get(key)

    def bodies(self, run_dir: str | os.PathLike[str]) -> Iterable[dict[str, Any]]:
        return self.run(run_dir).bodies

    def close(self) -> None:
        self._runs.clear()
