"""A tiny fake OpenAI-compatible model on 127.0.0.1 that does sums, used to generate harness fixtures and in tests.

Run it by hand: ``python tests/records/fake_openai.py --port 8765 [--wrong 7,11] [--fail]``.
It answers "What is A + B?" with the sum (or the sum + 1 for sums listed in ``--wrong``); with ``--fail``
every request gets a 500, which is how the failed-run fixtures were made.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

_SUM = re.compile(r"(\d+)\s*\+\s*(\d+)")


def answer_for(text: str, wrong: frozenset[int]) -> str:
    """The fake model's answer to one prompt: the last sum asked in it, deliberately off for sums in ``wrong``."""
    found = _SUM.findall(text)
    if not found:
        return "I do not know."
    a, b = found[-1]
    total = int(a) + int(b)
    return str(total + 1 if total in wrong else total)


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        parts = []
        for m in body["messages"]:
            c = m.get("content")
            if isinstance(c, list):
                parts.extend(str(p.get("text", "")) for p in c if isinstance(p, dict))
            elif c is not None:
                parts.append(str(c))
        return parts[-1] if parts else ""
    prompt = body.get("prompt", "")
    return prompt[-1] if isinstance(prompt, list) and prompt else str(prompt)


def make_app(wrong: Iterable[int] = (), fail: bool = False) -> web.Application:
    """The fake model as an aiohttp app: chat and text completions plus ``GET /v1/models``."""
    wrong_set = frozenset(wrong)

    async def chat(request: web.Request) -> web.Response:
        if fail:
            return web.json_response({"error": {"message": "fake upstream failure", "type": "server_error"}},
                                     status=500)
        body = await request.json()
        text = answer_for(_prompt_text(body), wrong_set)
        usage = {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
        if "messages" in body:
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": usage,
            })
        prompts = body.get("prompt", "")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        return web.json_response({
            "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": i, "text": answer_for(str(p), wrong_set), "finish_reason": "stop",
                         "logprobs": None} for i, p in enumerate(prompts)],
            "usage": usage,
        })

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--wrong", default="", help="comma-separated sums answered off by one")
    parser.add_argument("--fail", action="store_true", help="answer every request with a 500")
    args = parser.parse_args()
    wrong = [int(x) for x in args.wrong.split(",") if x]
    web.run_app(make_app(wrong, args.fail), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
