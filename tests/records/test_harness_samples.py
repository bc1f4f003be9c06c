"""Per-sample results (question, target, answer, grade) read from the harnesses' own sample files."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from evalproxy.records.harnesses import read_harness_output, read_samples, write_samples
from evalproxy.records.harnesses.base import SAMPLES_FILE, SampleScore, sample_text

from .conftest import copy_fixture

Q2 = "What is 2 + 5? Answer with the number only."


def _by_id(samples: list[SampleScore]) -> dict[str, SampleScore]:
    return {s.sample_id: s for s in samples}


def test_lm_eval_samples_carry_question_target_and_answer(workdir: Path) -> None:
    """lm-eval's samples file gives each sample's prompt (chat template unwrapped), target and filtered answer."""
    copy_fixture("lm_eval", workdir)
    r = read_harness_output(["lm_eval", "--output_path", "lm_eval"], workdir=workdir)
    wrong = _by_id([s for s in r.samples if s.value == 0])
    assert wrong["1"].input == Q2 and wrong["1"].target == "7" and wrong["1"].answer == "8"
    assert all(s.input and s.input.startswith("What is") and s.target for s in r.samples)


@pytest.mark.parametrize("kind", ["inspect_json", "inspect_eval"])
def test_inspect_samples_carry_question_target_and_answer(workdir: Path, kind: str) -> None:
    """inspect's logs (json and .eval) give each sample's input, target and completion."""
    copy_fixture(kind, workdir)
    r = read_harness_output(["inspect", "eval", "sums_task.py", "--log-dir", kind], workdir=workdir)
    q2 = _by_id(r.samples)["q2"]
    assert (q2.input, q2.target, q2.answer, q2.value) == (Q2, "7", "8", 0.0)


def test_nemo_byob_predictions_give_samples(workdir: Path) -> None:
    """nemo-evaluator BYOB's byob_predictions.jsonl beside results.yml gives per-sample prompt, target and grade."""
    copy_fixture("nemo_byob", workdir)
    r = read_harness_output(["nemo-evaluator", "run_eval", "--output_dir", "nemo_byob"], workdir=workdir)
    assert r.status == "success" and len(r.samples) == 10
    assert {s.task for s in r.samples} == {"sums"} and {s.metric for s in r.samples} == {"correct"}
    q2 = _by_id(r.samples)["1"]
    assert (q2.input, q2.target, q2.answer, q2.value) == (Q2, "7", "8", 0.0)
    assert sum(s.value for s in r.samples) == 8


def test_samples_file_round_trips_the_new_fields(workdir: Path, tmp_path: Path) -> None:
    """samples.jsonl keeps input and target: what is written reads back equal."""
    copy_fixture("lm_eval", workdir)
    r = read_harness_output(["lm_eval", "--output_path", "lm_eval"], workdir=workdir)
    write_samples(tmp_path, r.samples)
    back = list(read_samples(tmp_path))
    assert back == r.samples and back[1].input == Q2


def test_old_samples_file_without_the_new_fields_reads(tmp_path: Path) -> None:
    """A samples.jsonl written before input/target existed still reads, with those fields None."""
    old = {"task": "sums", "sample_id": "q2", "metric": "match", "value": 0.0, "answer": "8"}
    (tmp_path / SAMPLES_FILE).write_bytes(orjson.dumps(old) + b"\n")
    assert list(read_samples(tmp_path)) == [SampleScore("sums", "q2", "match", 0.0, "8")]


def test_sample_text_of_chats_and_reference_lists() -> None:
    """A multi-turn chat shows as role-labelled turns; several references join with ' | '; numbers as written."""
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert sample_text(chat) == "system: Be brief.\n\nuser: Hi"
    assert sample_text(["7", "seven"]) == "7 | seven"
    assert sample_text(3) == "3" and sample_text(None) is None
