"""Headless Debian Chromium for the tests that look at a page as a browser renders it (installed by .ci/setup)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
MISSING = "/usr/bin/chromium is missing (apt-get install chromium)"


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a fresh profile and nothing that talks to the network on its own."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={user_dir}", *args],
        capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(user_dir)})


def dump_dom(page: Path, user_dir: Path) -> str:
    """The page's DOM after Chromium ran it (its scripts included)."""
    done = chromium("--dump-dom", page.as_uri(), user_dir=user_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
