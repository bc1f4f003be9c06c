"""The README's user interceptor works as shown, and stays small."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_plugin() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if "register_for_adapter" in b)


def test_smallest_user_interceptor_is_under_12_lines() -> None:
    """The README's example interceptor has fewer than 12 non-blank lines."""
    assert len([line for line in readme_plugin().splitlines() if line.strip()]) < 12


async def test_readme_interceptor_runs_through_the_proxy(
    make_proxy: Any, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded through discovery.modules, the README's interceptor tags what reaches the model."""
    (tmp_path / "my_plugins.py").write_text(readme_plugin())
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        proxy = await make_proxy({"discovery": {"modules": ["my_plugins"]},
                                  "interceptors": [{"name": "tag_requests", "config": {"tag": "run-7"}}, "endpoint"]})
        resp = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert resp.status == 200
        assert sim.log[-1].body["user"] == "run-7"
    finally:
        sys.modules.pop("my_plugins", None)
