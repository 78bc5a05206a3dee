"""A fast OpenAI-compatible upstream for the gateway benchmark: it answers at once, so what
a benchmark measures through a supernode is the gateway's own cost, with no model in the
way.

Run:  .venv/bin/python scripts/fake_upstream.py --port 8100 [--model fake-model]

``GET /v1/models`` lists ``--model``; ``POST /v1/completions`` (JSON ``{model, prompt,
max_tokens, stream?}``) answers ``max_tokens`` words taken from the prompt, the same for
the same prompt (so a benchmark can check that the gateway passes the text through
unchanged), with ``usage``; with ``"stream": true`` one server-sent event per word, then
``data: [DONE]``. ``--delay-ms`` waits that long per word (0: none). It listens on
127.0.0.1 only and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web


def words_for(prompt: str, n: int) -> list[str]:
    src = prompt.split() or ["ok"]
    return [" " + src[i % len(src)] for i in range(n)]


def make_app(model: str, delay_s: float) -> web.Application:
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        words = words_for(str(body.get("prompt", "")), n)
        usage = {
            "prompt_tokens": len(str(body.get("prompt", "")).split()),
            "completion_tokens": n,
            "total_tokens": len(str(body.get("prompt", "")).split()) + n,
        }
        if not body.get("stream"):
            if delay_s:
                await asyncio.sleep(delay_s * n)
            return web.json_response(
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"index": 0, "text": "".join(words), "finish_reason": "length"}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for w in words:
            if delay_s:
                await asyncio.sleep(delay_s)
            event = {"object": "text_completion", "choices": [{"index": 0, "text": w}]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return app


async def serve(port: int, model: str, delay_s: float) -> None:
    runner = web.AppRunner(make_app(model, delay_s), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://127.0.0.1:{port} serving {model}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--delay-ms", type=float, default=0.0)
    a = p.parse_args()
    asyncio.run(serve(a.port, a.model, a.delay_ms / 1000))


if __name__ == "__main__":
    main()
