"""drop_params: top-level fields taken out of requests."""

from __future__ import annotations

import pytest

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.drop_params import DropParamsInterceptor
from tests.interceptors.units import call, make


class TestDropParams:
    async def test_top_level_only(self, run: RunContext) -> None:
        """The named keys go from the top level; the same name deeper stays (as NeMo)."""
        sent, _ = await call(make(DropParamsInterceptor, run, params=["logprobs", "top_k"]),
                             {"logprobs": True, "top_k": 3, "messages": [{"role": "user", "top_k": 1}]})
        assert sent == {"messages": [{"role": "user", "top_k": 1}]}

    def test_params_required(self) -> None:
        """params is required, as in NeMo."""
        with pytest.raises(ValueError, match="params"):
            DropParamsInterceptor.Params()
