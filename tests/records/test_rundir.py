"""Run directory templates."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records.rundir import expand_run_dir, new_run_id

NOW = datetime(2026, 3, 4, 5, 6, 7)


class TestExpandRunDir:
    @pytest.mark.parametrize(
        ("template", "expected"),
        [
            ("runs/{date}-{model}", "runs/20260304-meta_llama-3.1-8b"),
            ("runs/{date}T{time}/{run_id}", "runs/20260304T050607/abc123"),
            ("plain/dir", "plain/dir"),
        ],
    )
    def test_fields_expand(self, template: str, expected: str) -> None:
        """{date}, {time}, {model} (made path-safe) and {run_id} expand; a plain path stays as it is."""
        assert expand_run_dir(template, model="meta/llama-3.1-8b", run_id="abc123", now=NOW) == Path(expected)

    def test_unknown_field_is_a_config_error(self) -> None:
        """An unknown field is a ConfigError that lists the known ones."""
        with pytest.raises(ConfigError, match=r"\{user\}.*\{date\}"):
            expand_run_dir("runs/{user}", now=NOW)

    def test_model_field_needs_a_model(self) -> None:
        """{model} without a model id is a ConfigError, not a directory named 'None'."""
        with pytest.raises(ConfigError, match="no model"):
            expand_run_dir("runs/{model}", now=NOW)

    def test_run_ids_are_unique(self) -> None:
        """New run ids are 16 hex digits and do not repeat."""
        ids = {new_run_id() for _ in range(100)}
        assert len(ids) == 100 and all(len(i) == 16 for i in ids)
