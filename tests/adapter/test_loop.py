"""The event loop choice: uvloop by default where installed, asyncio's own on request."""

from __future__ import annotations

import asyncio
import gc
import importlib.util

import pytest

from evalproxy.adapter.server.loop import GC_THRESHOLD, loop_factory, run

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def loop_type() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed here")
def test_auto_runs_on_uvloop_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no choice made, the proxy's loop is uvloop's."""
    monkeypatch.delenv("EVALPROXY_LOOP", raising=False)
    assert run(loop_type()) == "uvloop"


@pytest.mark.parametrize("how", ["env", "arg"])
def test_asyncio_can_be_chosen(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """EVALPROXY_LOOP=asyncio or --loop asyncio runs on asyncio's own loop."""
    if how == "env":
        monkeypatch.setenv("EVALPROXY_LOOP", "asyncio")
        assert run(loop_type()) == "asyncio"
    else:
        assert run(loop_type(), "asyncio") == "asyncio"


def test_an_unknown_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop name that is not auto, uvloop or asyncio is an error naming the setting."""
    monkeypatch.setenv("EVALPROXY_LOOP", "tokio")
    with pytest.raises(ValueError, match="EVALPROXY_LOOP"):
        loop_factory()


def test_the_collector_is_tuned_while_serving_and_restored_after() -> None:
    """While the proxy runs, young collections come every GC_THRESHOLD[0] allocations and start-up objects are
    frozen; afterwards the process's own settings are back."""
    before = gc.get_threshold()

    async def seen() -> tuple[tuple[int, int, int], int]:
        return gc.get_threshold(), gc.get_freeze_count()

    during, frozen = run(seen())
    assert during == GC_THRESHOLD and frozen > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
