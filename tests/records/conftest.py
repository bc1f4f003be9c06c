"""Fixtures for run-record tests: the committed harness outputs, and run directories made from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory for a harness 'run'; fixtures copied in keep their modification times."""
    wd = tmp_path / "work"
    wd.mkdir()
    return wd


def copy_fixture(name: str, dest: Path) -> Path:
    """Copy ``fixtures/<name>`` to ``dest/<name>`` (metadata kept) and return the copy."""
    src = FIXTURES / name
    target = dest / name
    if src.is_dir():
        shutil.copytree(src, target)
    else:
        shutil.copy2(src, target)
    return target
