"""Every doc example marked runnable runs as written: the fenced shell blocks of README.md and docs/*.md marked
```` ```bash runnable ```` (or preceded by a ``<!-- runnable -->`` line) run, in document order, as one bash script in
an empty directory, with ``evalproxy`` on the PATH and ``MODEL_URL`` pointing at the simulated model."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import free_port, wait_http_up

ROOT = Path(__file__).resolve().parent.parent
# README.md always (a skip says when it marks nothing), a page of docs/ when it marks a block.
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if "runnable" in p.read_text())]
_FENCE = re.compile(r"^```(\w+)?([^\n]*)$")
_SHELLS = ("bash", "sh", "shell", "console")


def runnable_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each fenced shell block marked runnable, in order."""
    lines = text.splitlines()
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None or m.group(1) is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marked = "runnable" in m.group(2).split() or before == "<!-- runnable -->"
        if marked and m.group(1) in _SHELLS:
            out.append((i + 1, "\n".join(lines[i + 1:end])))
        i = end + 1
    return out


def test_markers_are_found() -> None:
    """Both marker forms are picked up, other blocks and languages are not; docs/jobs.md marks its whole walk."""
    text = ("```bash runnable\necho a\n```\n\n<!-- runnable -->\n\n```bash\necho b\n```\n```bash\necho no\n```\n"
            "<!-- runnable -->\n```yaml\nx: 1\n```\n")
    assert runnable_blocks(text) == [(1, "echo a"), (7, "echo b")]
    assert len(runnable_blocks((ROOT / "docs" / "jobs.md").read_text())) >= 7


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "evalproxy.simulator", "--port", str(port), "--sums", "--wrong",
                             "7,11"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_http_up(f"{url}/models", fake)
        yield url
    finally:
        fake.terminate()
        fake.wait(10)


def run_blocks(doc: Path, blocks: list[tuple[int, str]], workdir: Path, model_url: str
               ) -> subprocess.CompletedProcess[str]:
    """The blocks as one ``bash -e`` script (a line before each names it), in its own session, killed at the end
    with whatever it left running in the background."""
    bin_dir = workdir / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "evalproxy"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m evalproxy "$@"\n')
    shim.chmod(0o755)
    script = "set -eo pipefail\n" + "".join(f"echo '::block {doc.name}:{line}::' >&2\n{code}\n"
                                            for line, code in blocks)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_URL": model_url, "HOME": str(workdir)}
    out, err = workdir / ".stdout", workdir / ".stderr"  # files, not pipes: a background service keeps pipes open
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(["bash", "-c", script], cwd=workdir, env=env, stdout=fo, stderr=fe,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=180)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the session this test started, with what it left running
            proc.wait()
    return subprocess.CompletedProcess(proc.args, code, out.read_text(), err.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_marked_examples_run(doc: Path, tmp_path: Path, model_url: str) -> None:
    """The document's runnable blocks all succeed, in order, against the simulated model."""
    blocks = runnable_blocks(doc.read_text())
    if not blocks:
        pytest.skip(f"{doc.name} marks no runnable block")
    done = run_blocks(doc, blocks, tmp_path, model_url)
    failed = re.findall(r"::block (\S+)::", done.stderr)
    assert done.returncode == 0, f"{failed[-1] if failed else doc.name} failed:\n{done.stdout[-2000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    if doc.name == "jobs.md":  # the walk ends with the job's scores: 98 of 100 sums right (7 and 11 are wrong)
        assert '"accuracy"' in done.stdout and '"value":0.98' in done.stdout.replace(" ", "")
